"""``BufferMemory``: what ``send`` holds until the broker answers.

Every message holds its encoded size of ``buffer_memory`` from ``send`` (or
``send_batch``) until its batch is acknowledged or failed.  A ``send`` that
would go over waits up to ``max_block`` seconds for space and then raises
``BrokerError(BUSY)``; one that comes while nothing is held always gets
its space, so a message larger than ``buffer_memory`` goes alone instead of
never.  A ``send`` from a producer callback (the I/O thread, ``io_thread``)
cannot wait: the thread that would free the space is the one waiting, so it
gets BUSY at once.  After ``closed`` every reservation raises
BROKER_SHUTTING_DOWN.

It also counts the unanswered batches, which ``flush`` waits to reach
zero: both are released together, by the same ack, under the same lock.
With a spill journal, ``flush`` also waits for ``spilled`` (messages in
the journal not yet acknowledged, :meth:`spill_done`) to reach zero.
Every method is called with the Producer's lock held (both conditions are
built on it).
"""

from __future__ import annotations

import threading

from hpbroker.protocol.errors import BrokerError, ErrorCode


class BufferMemory:
    def __init__(self, lock: threading.Lock, limit: int, max_block: float):
        self.limit = limit
        self.max_block = max_block
        self.used = 0
        self.batches = 0  # opened or queued, not yet acknowledged or failed
        self.spilled = 0  # messages in the spill journal, not yet acknowledged or failed
        self.closed = False
        self.io_thread: threading.Thread | None = None  # may not wait for space
        self._space = threading.Condition(lock)
        self._idle = threading.Condition(lock)

    def reserve(self, size: int) -> None:
        """Take ``size`` bytes, waiting up to ``max_block`` for them."""
        if self.closed:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
        if self.used + size > self.limit and self.used > 0:
            if threading.current_thread() is self.io_thread:
                raise BrokerError(ErrorCode.BUSY, "buffer_memory is full (send from a callback cannot wait)")
            if not self._space.wait_for(lambda: self.used + size <= self.limit or self.used == 0 or self.closed,
                                        self.max_block):
                raise BrokerError(ErrorCode.BUSY, f"buffer_memory ({self.limit} bytes) stayed full for max_block_ms")
            if self.closed:
                raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
        self.used += size

    def release(self, nbytes: int) -> None:
        """One batch holding ``nbytes`` was answered (acknowledged or failed)."""
        self.used -= nbytes
        self.batches -= 1
        self._space.notify_all()
        if self.batches == 0 and self.spilled == 0:
            self._idle.notify_all()

    def unreserve(self, size: int) -> None:
        """Give back ``size`` bytes taken by :meth:`reserve` and not used."""
        self.used -= size
        self._space.notify_all()

    def spill_done(self, n: int) -> None:
        """``n`` spilled messages were answered."""
        self.spilled -= n
        if self.batches == 0 and self.spilled <= 0:
            self._idle.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no batch (and no spilled message) is unanswered; False
        after ``timeout`` s."""
        return self._idle.wait_for(lambda: self.batches == 0 and self.spilled <= 0, timeout)

    def wake_all(self) -> None:
        """Let every waiter look again (the producer is gone)."""
        self._space.notify_all()
        self._idle.notify_all()
