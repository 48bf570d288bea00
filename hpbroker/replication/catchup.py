"""Which partition a slave reads from its master's files next, and when.

A partition the PUB stream cannot carry (a gap, a lost message, a local
writer that refused a batch, the backlog found at a handshake) waits here
for a catch-up read.  One read is out at a time, in the order they were
asked for, and no faster than ``replication.catchup_rate_bytes``
(:class:`~hpbroker.replication.pacing.ByteRate`): a read that is due but
held back by the rate counts its wait in :attr:`CatchUp.throttled_s`.

Pure state with the clock passed in: the caller sends the read
:meth:`CatchUp.next_read` names and reports what the answer brought.
"""

from __future__ import annotations

import time
from collections import deque

from hpbroker.replication.pacing import ByteRate


class CatchUp:
    def __init__(self, pace: ByteRate, clock=time.monotonic):
        self.pace = pace
        self.clock = clock
        self.queue: deque[str] = deque()  # partitions waiting for a read, first asked first
        self.inflight: str | None = None  # the partition whose read is out
        self.reads = 0  # reads sent (history, gaps, lost PUB messages)
        self.bytes = 0  # bytes those reads brought
        self.throttled_s = 0.0  # how long reads that were due waited for the rate
        self._held_since: float | None = None

    def busy(self, key: str) -> bool:
        """Waiting for a read, or being read: the PUB stream's batches of
        ``key`` are not appended meanwhile (the read brings them)."""
        return key == self.inflight or key in self.queue

    def want(self, key: str) -> None:
        """Queue a read of ``key`` unless one is already queued or out."""
        if not self.busy(key):
            self.queue.append(key)

    @property
    def pending(self) -> int:
        """Partitions catching up: queued, plus the one being read."""
        return len(self.queue) + (1 if self.inflight else 0)

    def next_read(self) -> str | None:
        """The partition to read now, or None: a read is out, none is
        wanted, or the byte rate holds the next one back (the caller's loop
        asks again within its poll)."""
        if self.inflight is not None or not self.queue:
            return None
        if self.pace.wait_s() > 0:
            if self._held_since is None:
                self._held_since = self.clock()
            return None
        self._end_hold()
        self.inflight = self.queue.popleft()
        self.reads += 1
        return self.inflight

    def answered(self, key: str) -> None:
        """The master answered a read of ``key`` (the next read may go)."""
        if key == self.inflight:
            self.inflight = None

    def received(self, nbytes: int) -> None:
        """An answer brought ``nbytes``: count them, and pay for them at the rate."""
        self.bytes += nbytes
        self.pace.spend(nbytes)

    def reset(self) -> None:
        """The connection to the master ended: forget every read queued or
        out (the next handshake queues what is still behind)."""
        self.queue.clear()
        self.inflight = None
        self._end_hold()

    def _end_hold(self) -> None:
        """A read held back by the rate goes (or the connection ends): count the wait."""
        if self._held_since is not None:
            self.throttled_s += self.clock() - self._held_since
            self._held_since = None
