"""``Waker``: the fd the Producer's I/O thread polls, so any thread can wake it.

An eventfd (a pipe where there is none) registered in the transport's
``zmq.Poller``: caller threads ``wake()`` it after queuing work, the I/O
thread ``drain()``s it before looking at the queues.  Only the first
``wake()`` after a ``drain()`` writes; later ones cost an attribute check.
"""

from __future__ import annotations

import os


class Waker:
    """An fd the I/O thread polls; any thread may ``wake()`` it."""

    def __init__(self):
        self._armed = False  # a wake-up is already pending: later wake() calls cost nothing
        if hasattr(os, "eventfd"):
            self.rfd = self.wfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self.rfd, self.wfd = os.pipe()
            os.set_blocking(self.rfd, False)
            os.set_blocking(self.wfd, False)

    def wake(self) -> None:
        if self._armed:
            return
        self._armed = True
        try:
            os.write(self.wfd, (1).to_bytes(8, "little"))
        except BlockingIOError:
            pass  # already signalled

    def drain(self) -> None:
        # Read, then disarm, and only then look at the queues (the caller
        # does that next).  A wake() that returned early because we were
        # armed queued its work before we disarmed, so the caller sees it;
        # a wake() after the disarm writes again.  Disarming before the read
        # could swallow that write and leave us armed with an empty fd:
        # every later wake() would then be skipped (a hang).
        try:
            os.read(self.rfd, 4096)
        except BlockingIOError:
            pass
        self._armed = False

    def close(self) -> None:
        os.close(self.rfd)
        if self.wfd != self.rfd:
            os.close(self.wfd)
