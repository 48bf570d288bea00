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

One module per job: this one takes messages in (the caller threads, the
move of in-memory batches, ``put_back``), closes, and counts;
:mod:`~hpbroker.client.spill_group` holds the spill groups and their
Futures, :mod:`~hpbroker.client.spill_thread` the spill thread's loop (the
group writes), :mod:`~hpbroker.client.spill_resend` the read-ahead and the
re-send queues.  :class:`Spiller` inherits the last two's methods; the
state they share is set up in :meth:`Spiller.__init__`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable

from hpbroker import batch
from hpbroker.client.accumulator import Batch
from hpbroker.client.memory import BufferMemory
from hpbroker.client.records import SpilledFuture
from hpbroker.client.spill import SpillJournal, encode_record
# the jobs of a Spiller, one module each; their names are importable from here as before
from hpbroker.client.spill_group import GROUP_MAX, SpillGroup
from hpbroker.client.spill_resend import LOOKUP_BACKOFF, READ_AHEAD, READ_STEP, Resend, ResendQueues  # noqa: F401
from hpbroker.client.spill_thread import WRITE_BACKOFF, SpillThread, _Hole  # noqa: F401
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.client")

_new_future = object.__new__


class Spiller(SpillThread, ResendQueues):
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
