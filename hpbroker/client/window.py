"""``SendWindow``: the Producer's batches between sealing and the wire.

One FIFO per acceptor endpoint (``endpoint_for(partition)``, the
transport's current map), at most ``max_in_flight`` unanswered requests per
acceptor (no bound when None: acks=0 expects no answers), and the retries
waiting out ``backoff`` seconds.  A retry goes back to the *front* of its
acceptor's queue; with more than one request in flight a retried batch can
still land after a later one of its partition, as in Kafka.

``per_partition=True`` (an ordered producer) also lets out at most one batch
per (topic, partition) at a time: from :meth:`append` until :meth:`done`
(acknowledged, failed for good, or handed back), retries included, the
partition's later batches wait parked behind it, in order.  So a retry can
never be overtaken, while other partitions go on.

Owned by the I/O thread alone.  No sockets and no clock: ``now`` is passed
in (tests/test_client_window.py).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable


class SendWindow:
    def __init__(self, endpoint_for: Callable[[int], str], max_in_flight: int | None, backoff: float, *,
                 per_partition: bool = False):
        self.endpoint_for = endpoint_for
        self.max_in_flight = max_in_flight
        self.backoff = backoff
        self._queues: dict[str, deque] = {}
        self._inflight: dict[str, int] = {}
        self._retry: list = []  # (due, seq, batch): a heap
        self._retry_seq = itertools.count()
        self._holder: dict[tuple, object] | None = {} if per_partition else None  # partition -> its batch out
        self._parked: dict[tuple, deque] = {}

    def append(self, b) -> None:
        """Queue a newly sealed batch behind its acceptor's others (with
        ``per_partition``, parked behind its partition's batch that is out)."""
        holder = self._holder
        if holder is not None:
            tp = (b.topic, b.partition)
            if tp in holder:
                q = self._parked.get(tp)
                if q is None:
                    q = self._parked[tp] = deque()
                q.append(b)
                return
            holder[tp] = b
        self._queue_for(b.partition).append(b)

    def done(self, b) -> None:
        """``b`` is finished for good (acknowledged, failed, handed back):
        with ``per_partition``, its partition's next parked batch is queued."""
        holder = self._holder
        if holder is None:
            return
        tp = (b.topic, b.partition)
        if holder.get(tp) is not b:
            return  # never let out through the window (e.g. it failed to encode)
        q = self._parked.get(tp)
        if q:
            nb = q.popleft()
            if not q:
                del self._parked[tp]
            holder[tp] = nb
            self._queue_for(nb.partition).append(nb)
        else:
            del holder[tp]

    def take_sendable(self) -> list[tuple[str, object]]:
        """Take the batches the window lets out now, as (endpoint, batch),
        counting each as in flight until :meth:`answered`."""
        out = []
        limit = self.max_in_flight
        inflight = self._inflight
        for ep, q in self._queues.items():
            if limit is None:
                out += [(ep, b) for b in q]
                q.clear()
                continue
            while q and inflight[ep] < limit:
                inflight[ep] += 1
                out.append((ep, q.popleft()))
        return out

    def answered(self, endpoint: str) -> None:
        self._inflight[endpoint] -= 1

    def retry_later(self, b, now: float) -> None:
        heapq.heappush(self._retry, (now + self.backoff, next(self._retry_seq), b))

    def next_retry(self) -> float | None:
        """When the earliest retry is due, or None."""
        return self._retry[0][0] if self._retry else None

    def release_retries(self, now: float) -> None:
        """Put the retries due by ``now`` at the front of their queues, in
        the order they failed."""
        back = []
        while self._retry and self._retry[0][0] <= now:
            back.append(heapq.heappop(self._retry)[2])
        for b in reversed(back):
            self._queue_for(b.partition).appendleft(b)

    def regroup(self) -> None:
        """The partitions moved (a new leader): queue every waiting batch
        for its partition's endpoint now, each partition's in its order."""
        moved = [b for q in self._queues.values() for b in q]
        for q in self._queues.values():
            q.clear()
        for b in moved:
            self._queue_for(b.partition).append(b)

    def take_waiting(self, select: Callable[[object], bool]) -> list:
        """Take out every batch not in flight (queued, waiting for a retry, or
        parked) for which ``select(batch)`` is true; the rest keep their
        places.  A partition whose batch out was taken lets its next one go."""
        taken = []
        for q in self._queues.values():
            if any(select(b) for b in q):
                taken += [b for b in q if select(b)]
                kept = [b for b in q if not select(b)]
                q.clear()
                q.extend(kept)
        if any(select(r[2]) for r in self._retry):
            taken += [r[2] for r in self._retry if select(r[2])]
            self._retry = [r for r in self._retry if not select(r[2])]
            heapq.heapify(self._retry)
        for tp, q in list(self._parked.items()):
            if any(select(b) for b in q):
                taken += [b for b in q if select(b)]
                kept = deque(b for b in q if not select(b))
                if kept:
                    self._parked[tp] = kept
                else:
                    del self._parked[tp]
        if self._holder is not None:
            gone = {id(b) for b in taken}
            for tp, b in list(self._holder.items()):
                if id(b) in gone:
                    del self._holder[tp]
                    q = self._parked.pop(tp, None)
                    if q:  # not when a partition's batches are taken together
                        nb = q.popleft()
                        self._holder[tp] = nb
                        self._queue_for(nb.partition).append(nb)
                        if q:
                            self._parked[tp] = q
        return taken

    def take_all(self) -> list:
        """Every batch not in flight: the queued ones, then the retries, then
        the parked ones."""
        left = [b for q in self._queues.values() for b in q] + [r[2] for r in self._retry]
        left += [b for q in self._parked.values() for b in q]
        for q in self._queues.values():
            q.clear()
        self._retry.clear()
        self._parked.clear()
        if self._holder is not None:
            self._holder.clear()
        return left

    def _queue_for(self, partition: int) -> deque:
        ep = self.endpoint_for(partition)
        q = self._queues.get(ep)
        if q is None:
            q = self._queues[ep] = deque()
            self._inflight[ep] = 0
        return q
