"""``Spiller``: the Producer's spill journal at work - what goes in, what comes back.

A Producer given a ``spill_dir`` (docs/client.md, "Spilling to disk") hands
a message to this instead of to its in-memory batches when

* its partition still has messages in the journal (or the topic has messages
  spilled before its partition count was known): they are older, and a
  partition's messages leave in send order;
* the broker looks unavailable (:attr:`Spiller.down`: a produce request got
  no answer in time, the connection dropped, the broker said it is shutting
  down), until it acknowledges a produce again;
* the producer does not know the topic's partition count yet (it never
  waits for metadata): the message is stored with partition -1 and placed
  at re-send by :func:`~hpbroker.client.partitioner.partition_for_key`
  (keyed) or by its seq modulo the count (unkeyed);
* ``block_on_full=False`` and ``buffer_memory`` is full.

Three threads meet here, all under the Producer's one lock:

* caller threads (:meth:`Spiller.add`): a seq, an entry in the write queue,
  a member of the partition's *spill group* (whose Future stands for the
  message's, :class:`~hpbroker.client.records.SpilledFuture`).  No I/O: a
  few appends, so ``send()`` stays cheap while spilling;
* the spill thread (``hpbroker-producer-spill``): writes what queued up
  while its last ``fdatasync`` ran as one group (one ``pwrite``, one
  ``fdatasync``, the acknowledgements of re-sent messages in the same
  write), then reads the journal back ahead of the re-sends, up to
  ``READ_AHEAD`` bytes, into one queue per partition, asking for a topic's
  metadata when it needs the partition count;
* the I/O thread (:mod:`~hpbroker.client.sender`): :meth:`take_resends` cuts
  a batch from a partition's queue when that partition has no batch in
  memory and no re-sent batch unanswered - so the in-memory messages, older,
  are answered first, and a partition has one re-sent batch in flight at a
  time, retried until it is answered: re-sends never reorder.  The answer
  (:meth:`resent`) decrements the partition's pending count, resolves the
  futures, and queues the seqs for the next acknowledgement frame.

When a partition's count of pending records reaches zero, ``send()`` puts
its messages in memory again.

When the broker goes down (:meth:`Spiller.mark_down`), the I/O thread also
moves the in-memory batches that are not in flight to the journal
(``Sender._evacuate``): :meth:`reserve` gives them their seqs and places
in the write queue under the lock, so that everything spilled afterwards
comes after them, and :meth:`fill` hands over their frames, made after the
lock.  Nothing here touches a socket.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections import Counter, deque
from concurrent.futures import Future
from typing import Callable

from hpbroker import batch
from hpbroker.client.accumulator import Batch, OpenBatch
from hpbroker.client.framing import JournalError
from hpbroker.client.memory import BufferMemory
from hpbroker.client.partitioner import partition_for_key
from hpbroker.client.records import RecordMetadata, SpilledFuture
from hpbroker.client.spill import SpillJournal, SpillRecord, encode_record
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.client")

#: a spill group holds at most this many messages (their futures complete together at worst)
GROUP_MAX = 1024
#: bytes of spilled messages read back ahead of the re-sends (queued per partition or in flight):
#: about two batches for each of a few busy partitions.  While the broker is down, only READ_STEP
#: (enough for the re-send that finds out when it is back): records read back are Python objects,
#: and hundreds of thousands of them waiting would make every full GC pass take tens of ms
READ_AHEAD = 4 << 20
#: bytes read back per step: the records of one step are queued under the lock, so it stays short
READ_STEP = 64 << 10
#: wait between metadata lookups for a topic whose records wait for its partition count
LOOKUP_BACKOFF = 1.0
#: wait before writing again after a failed write or fdatasync
WRITE_BACKOFF = 1.0

_UNRESOLVED = -2
_MAX_TS_SPAN = (1 << 31) - 1  # a batch's timestamps are int32 ms deltas from its first: about 24 days
_new_future = object.__new__


class SpillGroup:
    """Consecutive spilled messages of one (topic, stored partition): one
    Future for all of them, resolved with the group once each member is
    answered; :meth:`outcome` gives a member's own result."""

    __slots__ = ("future", "topic", "seqs", "matched", "resolved", "closed", "parts", "offsets", "errors",
                 "whole", "left_error")

    def __init__(self, topic: str, whole: bool = False):
        self.future: Future = Future()
        self.topic = topic
        self.seqs = array("q")
        self.matched = 0  # members the read-ahead has found in the journal
        self.resolved = 0
        self.closed = False  # no new members; outcomes allocated
        self.parts: array | None = None
        self.offsets: array | None = None
        self.errors: dict[int, BaseException] | None = None
        self.whole = whole  # send_batch's: the first failure is everyone's
        self.left_error: BaseException | None = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            n = len(self.seqs)
            self.parts = array("i", [-1]) * n
            self.offsets = array("q", [_UNRESOLVED]) * n

    @property
    def complete(self) -> bool:
        return self.closed and self.resolved >= len(self.seqs)

    def outcome(self, i: int):
        """Member ``i``'s RecordMetadata, or the exception that failed it."""
        if self.whole and self.errors:
            return next(iter(self.errors.values()))
        off = self.offsets[i]
        if off != _UNRESOLVED:
            return RecordMetadata(self.topic, self.parts[i], off)
        if self.errors and i in self.errors:
            return self.errors[i]
        return self.left_error or BrokerError(ErrorCode.INTERNAL, "spilled message without an outcome")


class _Hole:
    """A place in the write queue, and ``count`` seqs, reserved for the
    messages of an in-memory batch being moved to the journal; ``frames``
    once they are framed (outside the lock).  The spill thread writes up to
    the first hole still empty."""

    __slots__ = ("count", "frames")

    def __init__(self, count: int):
        self.count = count
        self.frames: list[bytes] | None = None


class Resend:
    """What a re-sent batch carries besides its records: their seqs, their
    futures' slots, the (topic, stored partition) each was counted under,
    and the read-ahead bytes it holds."""

    __slots__ = ("seqs", "slots", "keys", "nbytes")

    def __init__(self):
        self.seqs: list[int] = []
        self.slots: list = []
        self.keys: list[tuple[str, int]] = []
        self.nbytes = 0


class Spiller:
    def __init__(self, journal: SpillJournal, lock: threading.Lock, memory: BufferMemory, *,
                 partitions: dict[str, int], lookup: Callable[[str], Future], wake_io: Callable[[], None],
                 batch_limit: Callable[[], int], read_ahead: int = READ_AHEAD):
        self.journal = journal
        self.directory = journal.directory
        self._lock = lock
        self._memory = memory
        self._partitions = partitions
        self._lookup = lookup
        self._wake_io = wake_io
        self._batch_limit = batch_limit
        self.read_ahead = read_ahead
        # -- under the lock -------------------------------------------------------------
        self.pending: dict[tuple[str, int], int] = dict(journal.pending)  # unacknowledged, by stored partition
        self.down = False
        self.queue: list[bytes] = []  # record frames to write, in seq order
        self.queued_bytes = 0
        self.next_seq = journal.next_seq
        self.open_groups: dict[tuple[str, int], SpillGroup] = {}
        self.groups: dict[tuple[str, int], deque[SpillGroup]] = {}  # not yet wholly found by the read-ahead
        self.live: set[SpillGroup] = set()  # not yet complete
        self.ready: dict[tuple[str, int], deque] = {}  # re-send queues by real partition
        self.unresolved: dict[str, deque] = {}  # a topic's records waiting for its partition count
        self.inflight: set[tuple[str, int]] = set()  # partitions with a re-sent batch unanswered
        self.acks: list[int] = []
        self.buffered = 0  # read-ahead bytes: queued for re-send or in flight
        self.stopping = False
        self.evacuate_wanted = False  # the broker just went down: move what waits in memory to the journal
        self._holes = 0  # holes in the queue not yet filled
        self._armed = False
        # counters (docs/client.md, "Producer.metrics()")
        self.spilled = 0
        self.spilled_bytes = 0
        self.synced = 0
        self.resent_messages = 0
        self.resent_bytes = 0
        self.failed = 0
        self.put_back_messages = 0
        self.moved_messages = 0
        self.recovered = journal.recovered
        self.syncs = 0
        self.disk_bytes = journal.disk_bytes
        self.segments = len(journal.segments)
        self.error: str | None = None
        memory.spilled = sum(self.pending.values())
        for r in journal.front:  # put back at a close: they go first
            self._place(r, None, (r.topic, r.partition))
        # -- the spill thread's own ----------------------------------------------------------
        self._pos = journal.start()
        self._event = threading.Event()
        self._lookups: dict[str, tuple[Future | None, float]] = {}  # topic -> (lookup out, retry at)
        self.thread = threading.Thread(target=self._run, name="hpbroker-producer-spill", daemon=True)

    def start(self) -> None:
        self._event.set()  # read back what an earlier producer left, at once
        self.thread.start()

    # -- caller threads (the lock held) ---------------------------------------------------

    def must_spill(self, topic: str, partition: int) -> bool:
        """Whether a message for (topic, partition) must go to the journal
        (partition -1: the count is not known yet)."""
        if self.down or partition < 0:
            return True
        p = self.pending
        return bool(p) and ((topic, partition) in p or (topic, -1) in p)

    def add(self, topic: str, partition: int, frame: bytes, size: int,
            group: SpillGroup | None = None) -> SpilledFuture:
        """(Lock held.)  Queue one message, already framed by
        :func:`~hpbroker.client.spill.encode_record` (the caller does that
        before taking the lock when it can), and return its future."""
        if self.stopping:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
        seq = self.next_seq
        self.next_seq = seq + 1
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        k = (topic, partition)
        self.pending[k] = self.pending.get(k, 0) + 1
        self._memory.spilled += 1
        self.spilled += 1
        self.spilled_bytes += size
        g = group
        if g is None:
            g = self.open_groups.get(k)
            if g is None:
                g = self.open_groups[k] = SpillGroup(topic)
                self.groups.setdefault(k, deque()).append(g)
                self.live.add(g)
        i = len(g.seqs)
        g.seqs.append(seq)
        if group is None and i + 1 >= GROUP_MAX:
            self._close_group(k, g)
        if not self._armed:
            self._armed = True
            self._event.set()
        fut = _new_future(SpilledFuture)
        fut._batch = g.future
        fut._index = i
        return fut

    #: the same test without the lock: a hint (each read is atomic, the answer may be stale) that lets
    #: the caller frame a message it will probably spill before taking the lock
    likely = must_spill

    def new_group(self, topic: str, partition: int) -> SpillGroup:
        """A group of its own for one ``send_batch`` call (after the open one)."""
        k = (topic, partition)
        g = self.open_groups.get(k)
        if g is not None:
            self._close_group(k, g)
        g = SpillGroup(topic, whole=True)
        self.groups.setdefault(k, deque()).append(g)
        self.live.add(g)
        return g

    def end_group(self, g: SpillGroup) -> None:
        g.close()

    def _close_group(self, k, g: SpillGroup) -> None:
        g.close()
        if self.open_groups.get(k) is g:
            del self.open_groups[k]

    # -- the I/O thread ------------------------------------------------------------------

    def mark_down(self) -> None:
        if not self.down:
            log.warning("producer: the broker does not answer; spilling new messages to %s", self.directory)
            self.down = True
            self.evacuate_wanted = True  # the Sender moves what waits in memory (Sender._evacuate)

    def reserve(self, batches: list[Batch]) -> list[tuple[Batch, _Hole]]:
        """(Lock held.)  The broker went down: ``batches`` (in-memory, none in
        flight, of partitions with nothing in the journal) move to the
        journal.  Each gets its messages' seqs and a hole in the write queue
        now, so that messages spilled from now on come after them, and a
        spill group whose Future is the batch's own (the futures ``send``
        returned for them resolve with each message's own outcome).  The
        caller frames them after the lock (:meth:`fill`)."""
        out = []
        for b in sorted(batches, key=lambda b: b.order):
            n = len(b.acc.values) if b.acc is not None else sum(batch.peek_count(f) for f in b.frames)
            k = (b.topic, b.partition)
            hole = _Hole(n)
            self.queue.append(hole)
            self._holes += 1
            g = self.open_groups.get(k)
            if g is not None:
                self._close_group(k, g)
            g = SpillGroup(b.topic, whole=b.whole)
            g.future = b.future
            g.seqs.extend(range(self.next_seq, self.next_seq + n))
            g.close()
            self.groups.setdefault(k, deque()).append(g)
            self.live.add(g)
            self.next_seq += n
            self.pending[k] = self.pending.get(k, 0) + n
            self._memory.spilled += n
            self.moved_messages += n
            out.append((b, hole))
        return out

    def fill(self, filled: list[tuple[_Hole, list[bytes]]]) -> None:
        """The framed messages of the holes :meth:`reserve` made."""
        with self._lock:
            for hole, frames in filled:
                if len(frames) != hole.count:
                    raise AssertionError(f"{len(frames)} messages for a hole of {hole.count}")
                hole.frames = frames
                self.queued_bytes += sum(map(len, frames))
                self._holes -= 1
            self._event.set()

    def mark_up(self) -> None:
        if self.down:
            log.warning("producer: the broker answers again; re-sending what was spilled to %s", self.directory)
            self.down = False
            self._event.set()  # read ahead in earnest again

    def take_resends(self, outstanding: dict | None) -> list:
        """(Lock held.)  For each partition that has re-sends queued, no batch
        in memory and no re-sent batch unanswered, the records of its next
        batch, taken off its queue: ``[(topic, partition, items)]``.  Only
        pops here; :meth:`make_batch` builds each batch after the lock."""
        if not self.ready or self.stopping:
            return []
        out = []
        empty = []
        limit = self._batch_limit() - batch.HEADER_SIZE
        for tp, q in self.ready.items():
            if not q:
                empty.append(tp)
                continue
            if tp in self.inflight or (outstanding and outstanding.get(tp)):
                continue
            items = [q.popleft()]
            size = items[0][3]
            lo = hi = items[0][0].timestamp
            while q and size + q[0][3] <= limit:
                ts = q[0][0].timestamp
                if ts < lo:
                    if hi - ts > _MAX_TS_SPAN:
                        break
                    lo = ts
                elif ts > hi:
                    if ts - lo > _MAX_TS_SPAN:
                        break
                    hi = ts
                item = q.popleft()
                size += item[3]
                items.append(item)
            out.append((tp[0], tp[1], items))
            self.inflight.add(tp)
            if not q:
                empty.append(tp)
        for tp in empty:
            if not self.ready[tp]:
                del self.ready[tp]
        return out

    def make_batch(self, topic: str, partition: int, items: list) -> Batch:
        """One re-send batch of ``items`` (from :meth:`take_resends`), for the
        Sender to encode like any other."""
        acc = OpenBatch(0, time.monotonic(), 0)
        res = Resend()
        values, ts = acc.values, []
        keys = None
        hs = None
        size = 0
        for i, (r, slot, k, n) in enumerate(items):
            values.append(r.value)
            ts.append(r.timestamp)
            if r.key is not None or keys is not None:
                if keys is None:
                    keys = [None] * i
                keys.append(r.key)
            if r.headers is not None:
                if hs is None:
                    hs = []
                hs.append((i, r.headers))
            size += n
        res.seqs = [it[0].seq for it in items]
        res.slots = [it[1] for it in items]
        res.keys = [it[2] for it in items]
        res.nbytes = size
        acc.keys, acc.ts, acc.headers, acc.nbytes = keys, ts, hs, size + batch.HEADER_SIZE
        b = Batch(topic, partition, None, None, size, acc)
        b.origin = res
        return b

    def resent(self, b: Batch, base: int | None, err: BaseException | None) -> None:
        """A re-sent batch was answered: acknowledged at ``base``, or failed
        for good with ``err`` (its records are dropped, counted, logged).

        The outcomes go into the groups without the lock: a member's slot is
        only ever written here, and its group was closed (under the lock)
        before it was read back.  The lock covers the counts only."""
        res: Resend = b.origin
        done = []
        for i, slot in enumerate(res.slots):
            if slot is not None:
                g, j = slot
                if err is None:
                    g.parts[j] = b.partition
                    g.offsets[j] = base + i if base >= 0 else -1  # -1: an idempotent retry of a batch written before
                else:
                    if g.errors is None:
                        g.errors = {}
                    g.errors[j] = err
                g.resolved += 1
                if g.complete:
                    done.append(g)
        n = len(res.seqs)
        counts = Counter(res.keys)
        with self._lock:
            self.inflight.discard((b.topic, b.partition))
            pending = self.pending
            for k, c in counts.items():
                left = pending.get(k, 0) - c
                if left > 0:
                    pending[k] = left
                else:
                    pending.pop(k, None)
            for g in done:
                self.live.discard(g)
            self.acks.extend(res.seqs)
            self.buffered -= res.nbytes
            if err is None:
                self.resent_messages += n
                self.resent_bytes += res.nbytes
            else:
                self.failed += n
            self._memory.spill_done(n)
            self._event.set()
        if err is not None:
            log.warning("producer: %d spilled messages for %s[%d] failed for good and are dropped from %s: %s",
                        n, b.topic, b.partition, self.directory, err)
        for g in done:
            g.future.set_result(g)

    def unsent(self, b: Batch) -> None:
        """A re-sent batch left unanswered at close: its records stay in the journal."""
        with self._lock:
            self.inflight.discard((b.topic, b.partition))
            self.buffered -= b.origin.nbytes

    def put_back(self, batches: list[Batch]) -> int:
        """At close: the in-memory batches the broker did not acknowledge go
        to the journal as ``F`` records, oldest first, so the next producer
        on this directory sends them before its partitions' other records.
        Returns how many messages."""
        n = 0
        frames = []
        for b in sorted(batches, key=lambda b: b.order):
            frames.append([encode_record(True, b.topic, b.partition, key, value, headers, ts)
                           for key, value, headers, ts in records_of_batch(b)])
        with self._lock:
            for b, fs in zip(sorted(batches, key=lambda b: b.order), frames):
                k = (b.topic, b.partition)
                for f in fs:
                    self.next_seq += 1
                    self.queue.append(f)
                    self.pending[k] = self.pending.get(k, 0) + 1
                    n += 1
            self.put_back_messages += n
            self._event.set()
        return n

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Write what is queued, stop the spill thread, close the journal, and
        resolve the futures of spilled messages still unanswered with
        BROKER_SHUTTING_DOWN: they stay in the journal for the next producer."""
        with self._lock:
            self.stopping = True
        self._event.set()
        if self.thread.is_alive():
            self.thread.join()
        self.journal.close()
        err = BrokerError(ErrorCode.BROKER_SHUTTING_DOWN,
                          f"producer closed before the broker acknowledged; the message is in the spill journal "
                          f"{self.directory} and the next Producer on that spill_dir sends it")
        done = []
        with self._lock:
            for g in self.live:
                g.close()
                g.left_error = err
                done.append(g)
            self.live.clear()
            self.groups.clear()
            self.open_groups.clear()
        for g in done:
            g.future.set_result(g)

    # -- the spill thread ------------------------------------------------------------------

    def _run(self) -> None:
        retry_at = 0.0
        while True:
            timeout = 0 if self.stopping else self._timeout(retry_at)
            self._event.wait(timeout)
            self._event.clear()
            with self._lock:
                self._armed = False
                stopping = self.stopping
                if time.monotonic() < retry_at and not stopping:
                    continue
                recs, self.queue = self.queue, []
                if any(e.__class__ is _Hole for e in recs):
                    recs = self._unhole(recs)
                qbytes, self.queued_bytes = self.queued_bytes, 0
                acks, self.acks = self.acks, []
            if recs or acks:
                try:
                    self.journal.write_frames(recs, acks)
                except (OSError, JournalError) as e:
                    with self._lock:
                        self.queue[:0] = recs
                        self.queued_bytes += qbytes
                        self.acks[:0] = acks
                        self.error = f"{type(e).__name__}: {e}"
                    if stopping:
                        log.error("producer: could not write %d spilled messages to %s at close (%s); they are "
                                  "lost", len(recs), self.directory, e)
                        return
                    log.error("producer: writing the spill journal %s failed (%s); trying again in %.0f s",
                              self.directory, e, WRITE_BACKOFF)
                    retry_at = time.monotonic() + WRITE_BACKOFF
                    continue
                except BaseException:
                    log.exception("producer: the spill thread failed")
                    with self._lock:
                        self.error = "the spill thread failed (see the log)"
                    return
                with self._lock:
                    self.synced += len(recs)
                    self.syncs = self.journal.syncs
                    self.disk_bytes = self.journal.disk_bytes
                    self.segments = len(self.journal.segments)
                    self.error = None
            if stopping:
                with self._lock:
                    q = self.queue
                    if not self.acks and (not q or q[0].__class__ is _Hole and q[0].frames is None):
                        if q:
                            log.error("producer: %d messages being moved to the spill journal %s were not "
                                      "framed before close; they are lost", sum(
                                          e.count if e.__class__ is _Hole else 1 for e in q), self.directory)
                        return
                continue
            try:
                self._read_ahead()
            except JournalError as e:
                log.error("producer: reading the spill journal back failed; nothing more is re-sent: %s", e)
                with self._lock:
                    self.error = f"{type(e).__name__}: {e}"
                return

    def _unhole(self, recs: list) -> list[bytes]:
        """(Lock held.)  The frames of ``recs`` up to its first empty hole
        (the rest goes back to the queue), holes replaced by their frames."""
        out = []
        for i, e in enumerate(recs):
            if e.__class__ is _Hole:
                if e.frames is None:
                    self.queue[:0] = recs[i:]
                    return out
                out += e.frames
            else:
                out.append(e)
        return out

    def _timeout(self, retry_at: float) -> float | None:
        now = time.monotonic()
        due = [retry_at] if retry_at > now else []
        with self._lock:
            if self.unresolved:
                due += [at for t, (fut, at) in self._lookups.items() if fut is None and t in self.unresolved]
        return max(0.0, min(due) - now) if due else None

    def _read_ahead(self) -> None:
        while True:
            room = (READ_STEP if self.down else self.read_ahead) - self.buffered
            if room <= 0:
                break
            recs = self.journal.read(self._pos, min(room, READ_STEP))
            if not recs:
                break
            with self._lock:
                for r in recs:
                    k = (r.topic, r.partition)
                    self._place(r, self._match(k, r.seq), k)
            self._wake_io()  # the I/O thread may start on these while more are read
        self._resolve()
        self._wake_io()

    def _place(self, r: SpillRecord, slot, k) -> None:
        """(Lock held.)  Queue one record read back for re-send."""
        n = batch.ENTRY_SIZE + len(r.value) + (0 if r.key is None else len(r.key)) + \
            (0 if r.headers is None else len(r.headers))
        self.buffered += n
        uq = self.unresolved.get(r.topic)
        if uq is None and r.partition < 0 and not self._partitions.get(r.topic):
            uq = self.unresolved[r.topic] = deque()
        if uq is not None:
            uq.append((r, slot, k, n))
            return
        p = r.partition if r.partition >= 0 else self._choose(r, self._partitions[r.topic])
        q = self.ready.get((r.topic, p))
        if q is None:
            q = self.ready[(r.topic, p)] = deque()
        q.append((r, slot, k, n))

    @staticmethod
    def _choose(r: SpillRecord, n: int) -> int:
        return partition_for_key(r.key, n) if r.key is not None else r.seq % n

    def _match(self, k, seq: int):
        """(Lock held.)  The future slot of record ``seq`` of ``k``: (group,
        index), or None for a record of an earlier producer."""
        dq = self.groups.get(k)
        while dq:
            g = dq[0]
            if g.matched < len(g.seqs):
                want = g.seqs[g.matched]
                if want == seq:
                    i = g.matched
                    g.matched += 1
                    if not g.closed:
                        self._close_group(k, g)  # re-sending started: later messages start a new group
                    if g.matched == len(g.seqs):
                        dq.popleft()
                    return g, i
                if want > seq:
                    return None
                log.error("producer: spilled message %d of %s was not found in the journal", want, k)
                g.matched += 1
                continue
            if g.closed:
                dq.popleft()
                continue
            return None
        return None

    def _resolve(self) -> None:
        """Place the records of topics whose partition count is now known;
        ask for the others'."""
        ask = []
        now = time.monotonic()
        with self._lock:
            for topic in list(self.unresolved):
                n = self._partitions.get(topic)
                if n:
                    for r, slot, k, size in self.unresolved.pop(topic):
                        q = self.ready.get((topic, p := (r.partition if r.partition >= 0 else self._choose(r, n))))
                        if q is None:
                            q = self.ready[(topic, p)] = deque()
                        q.append((r, slot, k, size))
                    self._lookups.pop(topic, None)
                    continue
                fut, at = self._lookups.get(topic, (None, 0.0))
                if fut is not None and fut.done():
                    if fut.exception() is not None:
                        log.warning("producer: no partition count for %r yet (%s); spilled messages wait",
                                    topic, fut.exception())
                    self._lookups[topic] = (None, now + LOOKUP_BACKOFF)
                elif fut is None and now >= at:
                    ask.append(topic)
        for topic in ask:
            fut = self._lookup(topic)
            with self._lock:
                self._lookups[topic] = (fut, 0.0)
            fut.add_done_callback(lambda _f: self._event.set())

    # -- metrics ---------------------------------------------------------------------------

    def metrics(self) -> dict:
        """(Lock held.)  The counters of docs/client.md, "Producer.metrics()"."""
        return {
            "spilled_messages": self.spilled,
            "spilled_bytes": self.spilled_bytes,
            "spill_synced_messages": self.synced,
            "spill_syncs": self.syncs,
            "resent_messages": self.resent_messages,
            "resent_bytes": self.resent_bytes,
            "spill_failed_messages": self.failed,
            "spill_put_back_messages": self.put_back_messages,
            "spill_moved_messages": self.moved_messages,
            "spill_recovered_messages": self.recovered,
            "spill_pending_messages": sum(self.pending.values()),
            "spill_queued_messages": len(self.queue),
            "spill_disk_bytes": self.disk_bytes,
            "spill_segments": self.segments,
            "spill_error": self.error,
            "broker_down": self.down,
        }


def records_of_batch(b: Batch):
    """``(key, value, headers, timestamp)`` of each message of an in-memory batch."""
    a = b.acc
    if a is not None:
        n = len(a.values)
        keys = a.keys if a.keys is not None else [None] * n
        ts = a.ts if a.ts is not None else [a.created_ms] * n
        hs = [None] * n
        for i, blob in a.headers or ():
            hs[i] = blob
        return list(zip(keys, a.values, hs, ts))
    out = []
    for f in b.frames:
        for pos, _ in batch.iter_batches(f):
            out += [(r.key, r.value, r.headers, r.timestamp) for r in batch.records_of(f, pos)]
    return out
