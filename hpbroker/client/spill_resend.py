"""The re-sends: spilled messages read back, queued per partition, sent in order, answered.

The spill thread reads the journal back ahead of the re-sends, up to
``READ_AHEAD`` bytes (:meth:`ResendQueues._read_ahead`), into one queue per
partition, matching each record to its spill group's slot and asking for a
topic's metadata when it needs the partition count.  The I/O thread
(:mod:`~hpbroker.client.sender`) cuts a batch from a partition's queue with
:meth:`~ResendQueues.take_resends` when that partition has no batch in memory
and no re-sent batch unanswered - so the in-memory messages, older, are
answered first, and a partition has one re-sent batch in flight at a time,
retried until it is answered: re-sends never reorder.  The answer
(:meth:`~ResendQueues.resent`) decrements the partition's pending count,
resolves the futures, and queues the seqs for the next acknowledgement
frame.

These methods are a part of :class:`~hpbroker.client.spiller.Spiller`,
whose ``__init__`` holds the state they use, under the Producer's one lock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque

from hpbroker import batch
from hpbroker.client.accumulator import Batch, OpenBatch
from hpbroker.client.partitioner import partition_for_key
from hpbroker.client.spill_format import SpillRecord

log = logging.getLogger("hpbroker.client")

#: bytes of spilled messages read back ahead of the re-sends (queued per partition or in flight):
#: about two batches for each of a few busy partitions.  While the broker is down, only READ_STEP
#: (enough for the re-send that finds out when it is back): records read back are Python objects,
#: and hundreds of thousands of them waiting would make every full GC pass take tens of ms
READ_AHEAD = 4 << 20
#: bytes read back per step: the records of one step are queued under the lock, so it stays short
READ_STEP = 64 << 10
#: wait between metadata lookups for a topic whose records wait for its partition count
LOOKUP_BACKOFF = 1.0

_MAX_TS_SPAN = (1 << 31) - 1  # a batch's timestamps are int32 ms deltas from its first: about 24 days


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


class ResendQueues:
    """The re-send queues' methods, a part of :class:`~hpbroker.client.spiller.Spiller`."""

    # -- the I/O thread ------------------------------------------------------------------

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

    # -- the spill thread: the read-ahead -----------------------------------------------------

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
