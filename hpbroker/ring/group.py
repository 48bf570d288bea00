"""Several input rings, one sleeper: the consumer side of a disk writer.

A writer process reads one ring per acceptor.  All those rings name the
same doorbell semaphore in their header, so every producer posts the same
semaphore, and the writer sleeps on it once for all of them::

    group = ReaderGroup([ring.reader() for ring in rings], doorbell_signal)
    while running:
        for r in group.readers:
            r.drain(handler)
        group.wait(timeout=0.5)      # spins, then sleeps on the doorbell
"""

from __future__ import annotations

from hpbroker.ring.errors import PeerDead, RingClosed
from hpbroker.ring.wait import SpinThenBlock

__all__ = ["ReaderGroup"]


class ReaderGroup:
    """Wait on many rings' readers with one strategy (usually one doorbell semaphore)."""

    def __init__(self, readers, signal=None, *, spin_us: float = 50, wait=None) -> None:
        self.readers = list(readers)
        if wait is None:
            if signal is None:
                raise ValueError("give the shared doorbell signal or a wait strategy")
            wait = SpinThenBlock(signal, spin_us)
        self.wait_strategy = wait

    def available(self) -> bool:
        for r in self.readers:
            if r.available():
                return True
        return False

    def _arm(self) -> None:
        for r in self.readers:
            r.arm()

    def _disarm(self) -> None:
        for r in self.readers:
            r.disarm()

    def _check(self) -> None:
        for r in self.readers:
            try:
                r.check()
            except (PeerDead, RingClosed) as e:
                e.reader = r  # the caller drops this reader and carries on
                raise

    def wait(self, timeout: float | None = None, also=None) -> bool:
        """Block until any ring has a record, or ``also()`` is true (another
        event that posts the same doorbell, e.g. a finished disk flush).  A
        dead or closed, fully drained producer raises PeerDead/RingClosed
        with ``.reader`` set to its reader."""
        ready = self.available if also is None else (lambda: also() or self.available())
        return self.wait_strategy.wait(ready, self._arm, self._disarm, self._check, timeout)

    def drain(self, handler, limit: int | None = None) -> int:
        """``reader.drain(handler, limit)`` on every ring; the number of records handled."""
        n = 0
        for r in self.readers:
            n += r.drain(handler, limit)
        return n

    def remove(self, reader) -> None:
        self.readers.remove(reader)
