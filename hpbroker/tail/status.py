"""The agent's one-line progress status and its broker-state messages.

:class:`Status` turns the shipper's counters into one line
(``tail: 1,012,345 lines/s, 101.2 MB/s | 5,000,000 lines, 500.0 MB acked |
2 files, 12.0 MB in flight | lag app.log 0 B, app.log.1 3.1 MB``) every
``status_interval_ms``.  :class:`BrokerState` says on stderr when the broker
stops acknowledging and when it starts again: once per change, never per
retry.  Both take the clock as a parameter.
"""

from __future__ import annotations

import os
from typing import Callable


def human_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


class Status:
    def __init__(self, interval: float, clock: Callable[[], float], max_files: int = 4):
        self.interval = interval
        self.clock = clock
        self.max_files = max_files
        self._t = clock()
        self._lines = 0
        self._bytes = 0

    def due(self) -> bool:
        return self.clock() - self._t >= self.interval

    def line(self, shipper) -> str:
        now = self.clock()
        dt = max(1e-9, now - self._t)
        lines, nbytes = shipper.acked_lines, shipper.acked_bytes
        rate = (lines - self._lines) / dt
        brate = (nbytes - self._bytes) / dt
        self._t, self._lines, self._bytes = now, lines, nbytes
        files = sorted(shipper.follower.files.values(), key=lambda f: -f.lag())
        lags = ", ".join(f"{os.path.basename(f.path)} {human_bytes(f.lag())}" for f in files[:self.max_files])
        more = f" (+{len(files) - self.max_files} more)" if len(files) > self.max_files else ""
        return (f"tail: {rate:,.0f} lines/s, {human_bytes(brate)}/s | {lines:,} lines, {human_bytes(nbytes)} acked | "
                f"{len(files)} files, {human_bytes(shipper.inflight_bytes)} in flight | lag {lags or '-'}{more}")


class BrokerState:
    """Trouble begins when a request fails, or when the oldest request in
    flight has waited ``stall`` seconds with no acknowledgement meanwhile;
    it ends at the first acknowledgement after it began.  :meth:`update`
    returns the message for a change, or None: one line per change of
    state, never one per retry."""

    def __init__(self, stall: float, retry_backoff: float, max_inflight: int):
        self.stall = stall
        self.retry_backoff = retry_backoff
        self.max_inflight = max_inflight
        self.since: float | None = None  # trouble began

    def update(self, now: float, oldest_sent: float | None, last_ack_at: float | None,
               error: BaseException | None, unsaved_bytes: int) -> str | None:
        if self.since is None:
            if error is not None:
                self.since = now
                return (f"sending to the broker failed ({error}); retrying, every {self.retry_backoff:g} s doubling "
                        f"up to 10 s; reading goes on up to {human_bytes(self.max_inflight)} unacknowledged "
                        f"({human_bytes(unsaved_bytes)} now)")
            quiet_since = max(t for t in (oldest_sent, last_ack_at) if t is not None) \
                if oldest_sent is not None else None
            if quiet_since is not None and now - quiet_since >= self.stall:
                self.since = quiet_since
                return (f"the broker has not acknowledged for {now - quiet_since:.1f} s; reading goes on up to "
                        f"{human_bytes(self.max_inflight)} unacknowledged ({human_bytes(unsaved_bytes)} now)")
            return None
        if error is None and last_ack_at is not None and last_ack_at >= self.since:
            took = now - self.since
            self.since = None
            return f"the broker acknowledges again (after {took:.1f} s); reading on"
        return None
