"""A signal delivered while a process sleeps on a ring's semaphore must not
kill it: the broker's writers get SIGTERM (stop) and SIGUSR2 (promotion)
exactly while they wait for records."""

from __future__ import annotations

import os
import signal
import threading
import time

import posix_ipc

from hpbroker.ring import SemaphoreSignal


def test_semaphore_wait_interrupted_by_a_signal_returns_instead_of_raising():
    name = f"/hpb.testsig{os.getpid()}.bell"
    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, initial_value=0)
    seen = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        sig = SemaphoreSignal(sem)
        returned = threading.Event()

        def nudge():  # again until the wait returns: a signal that came before it slept is not the case tested
            while not returned.wait(0.2):
                os.kill(os.getpid(), signal.SIGUSR2)

        nudger = threading.Thread(target=nudge)
        nudger.start()
        t = time.monotonic()
        try:
            assert sig.wait(120.0) is False
            assert seen, "the wait returned before the handler ran"
        finally:
            returned.set()
            nudger.join()
        assert set(seen) == {signal.SIGUSR2}
        assert time.monotonic() - t < 60  # it returned because of a signal, not the timeout
        sig.post()
        assert sig.wait(1.0) is True
    finally:
        signal.signal(signal.SIGUSR2, old)
        sem.unlink()
        sem.close()
