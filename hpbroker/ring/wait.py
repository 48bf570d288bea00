"""How a ring side waits: swappable strategies (as in the Disruptor), and the signals they sleep on.

A waiting side never burns a core for long: it spins for ``spin_us``, then
blocks on a semaphore.  The other side pays for a wake-up syscall only when
the sleeper said it is asleep, through a ``*_waiting`` flag in the ring
header.  The lost-wakeup race (sleeper checks, producer publishes and reads
the flag as 0, sleeper sleeps) is closed by the Dekker pattern::

    sleeper                          waker
    -------                          -----
    flag = 1                         publish (record word / head)
    full_fence()                     full_fence()
    if ready(): flag = 0; return     if flag: flag = 0; signal.post()
    signal.wait(tick)

With a full fence between each side's store and its load, at least one of
them sees the other's store: either the sleeper sees the data, or the waker
sees the flag.  x86-64 (TSO) may reorder a store with a *later load* (store
buffer), which is exactly this pattern, so a plain store is not enough;
:func:`full_fence` executes a ``lock``-prefixed instruction.  As a second
line of defence every sleep is bounded by ``tick`` seconds.

Waiting for a *set* of rings (a disk writer consuming one ring per
acceptor) uses one shared signal, the doorbell: ``arm``/``disarm`` set and
clear the flag of every ring, and the producers of all those rings post
the same semaphore (its name is in each ring's header).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

__all__ = [
    "full_fence",
    "Signal",
    "ThreadSignal",
    "SemaphoreSignal",
    "WaitStrategy",
    "BusySpin",
    "SpinThenBlock",
    "DEFAULT_TICK_S",
]

DEFAULT_TICK_S = 0.1

_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier (StoreLoad included).

    CPython's ``Lock.acquire`` is ``sem_trywait`` and ``release`` is
    ``sem_post`` (glibc, Linux); both are ``lock cmpxchg``/``lock xadd`` on
    x86-64, which orders every earlier store before every later load.
    """
    _fence_lock.acquire()
    _fence_lock.release()


class Signal(Protocol):
    """What a sleeper blocks on and a waker posts."""

    def post(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if posted."""
        ...


class ThreadSignal:
    """A signal between threads of one process (tests over a bytearray)."""

    def __init__(self) -> None:
        self._sem = threading.Semaphore(0)

    def post(self) -> None:
        self._sem.release()

    def wait(self, timeout: float) -> bool:
        return self._sem.acquire(timeout=max(timeout, 0.0))


class SemaphoreSignal:
    """A signal between processes: a POSIX named semaphore (``posix_ipc``)."""

    def __init__(self, semaphore) -> None:
        import posix_ipc  # only needed for the shared-memory case

        self._busy = posix_ipc.BusyError
        self._interrupted = posix_ipc.SignalError
        self.semaphore = semaphore

    def post(self) -> None:
        self.semaphore.release()

    def wait(self, timeout: float) -> bool:
        """True when posted; False on timeout or when a signal interrupted
        the wait (the handler has run; callers re-check their state)."""
        try:
            self.semaphore.acquire(max(timeout, 0.0))
            return True
        except (self._busy, self._interrupted):
            return False


Check = Callable[[], None]
Flag = Callable[[], None]
Ready = Callable[[], bool]


class WaitStrategy(Protocol):
    def wait(self, ready: Ready, arm: Flag, disarm: Flag, check: Check, timeout: float | None) -> bool:
        """Return True once ``ready()``; False after ``timeout`` seconds (None = forever).

        ``arm``/``disarm`` set/clear this side's waiting flag(s) in the ring
        header(s); ``check`` is called about every tick while waiting and may
        raise (peer dead, ring closed) and stamps this side's heartbeat.
        """
        ...


class BusySpin:
    """Never sleeps: lowest latency, burns a core.  For benchmarks and short waits only."""

    def __init__(self, tick_s: float = DEFAULT_TICK_S) -> None:
        self.tick_s = tick_s

    def wait(self, ready, arm, disarm, check, timeout):
        if ready():
            return True
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        next_check = now
        while True:
            if ready():
                return True
            now = time.monotonic()
            if now >= next_check:
                check()
                next_check = now + self.tick_s
            if deadline is not None and now >= deadline:
                return ready()


class SpinThenBlock:
    """Spin for ``spin_us``, then sleep on ``signal`` in slices of ``tick_s``.

    Pass the same ``signal`` (a doorbell) to the consumers of several rings
    to sleep on all of them at once (see :class:`hpbroker.ring.ReaderGroup`).
    """

    def __init__(self, signal: Signal, spin_us: float = 50, tick_s: float = DEFAULT_TICK_S) -> None:
        self.signal = signal
        self.spin_s = spin_us / 1e6
        self.tick_s = tick_s
        # check() reads /proc/<peer>/stat (is the peer alive?): once a tick,
        # not at every sleep.  A writer sleeps thousands of times a second,
        # and that read was about 4 % of its samples in a py-spy profile.
        self._next_check = 0.0

    def wait(self, ready, arm, disarm, check, timeout):
        if ready():
            return True
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        spin_end = now + self.spin_s
        if deadline is not None and deadline < spin_end:
            spin_end = deadline
        while True:  # spin phase: no syscalls
            if ready():
                return True
            if time.monotonic() >= spin_end:
                break
        while True:  # block phase
            now = time.monotonic()
            if now >= self._next_check:
                check()
                self._next_check = now + self.tick_s
            arm()
            full_fence()
            if ready():
                disarm()
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                disarm()
                return ready()
            left = self.tick_s if deadline is None else min(self.tick_s, deadline - now)
            self.signal.wait(left)
            disarm()
            if ready():
                return True
