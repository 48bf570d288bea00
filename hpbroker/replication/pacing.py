"""A byte rate for catch-up reads: a token bucket that may go into debt.

A slave does not know how many bytes a catch-up read will bring back until
the reply is in (up to ``catchup_bytes``, fewer at a log's end), so a read
may go whenever the budget is above zero and its real size is spent after
it: the debt then holds the next read back for exactly as long as it takes
to pay.  Over any stretch of time the bytes read are at most
``rate * seconds + burst``.  ``rate == 0`` means no limit.

The clock is passed in, so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import time


class ByteRate:
    def __init__(self, rate: int, burst: int, clock=time.monotonic):
        if rate < 0 or burst <= 0:
            raise ValueError(f"rate must be >= 0 and burst > 0 (got rate={rate}, burst={burst})")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.budget = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.budget = min(float(self.burst), self.budget + (now - self._at) * self.rate)
        self._at = now

    def wait_s(self) -> float:
        """Seconds until the next read may go (0.0: now)."""
        if self.rate == 0:
            return 0.0
        self._refill()
        # an empty budget (exactly 0) waits too, if only for a moment: reads go while it is above zero
        return 0.0 if self.budget > 0 else -self.budget / self.rate + 1e-9

    def spend(self, nbytes: int) -> None:
        """A read brought ``nbytes``."""
        if self.rate:
            self._refill()
            self.budget -= nbytes
