"""The producer's wake-up fd must never lose a wake-up (a lost one hung
Producer.close() in about one benchmark run in three).

The race needs the user thread to wake() between the I/O thread's steps, so
the test makes the interpreter switch threads as often as it can.  With the
old drain order (disarm, then read) it loses a wake-up in about one round
in five; five rounds run here."""

from __future__ import annotations

import select
import sys
import threading

from hpbroker.client.producer import _Waker


def lost_wake_up(rounds: int = 5, n: int = 100_000) -> bool:
    for _ in range(rounds):
        w = _Waker()
        queued = 0
        lock = threading.Lock()

        def user():
            nonlocal queued
            for _ in range(n):
                with lock:
                    queued += 1
                w.wake()

        t = threading.Thread(target=user)
        t.start()
        seen = 0
        try:
            while seen < n:
                if not select.select([w.rfd], [], [], 0.5)[0]:
                    with lock:
                        if queued > seen:
                            return True  # work is queued, yet nothing woke us
                    continue
                w.drain()
                with lock:
                    seen = queued  # the I/O thread takes everything queued so far
        finally:
            t.join()
            w.close()
    return False


def test_no_wake_up_is_lost_under_contention():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        assert not lost_wake_up()
    finally:
        sys.setswitchinterval(before)
