"""buffer_memory (hpbroker/client/memory.py): send() waits for space, then BUSY, without a broker."""

from __future__ import annotations

import threading
import time

import pytest

from hpbroker.client.memory import BufferMemory
from hpbroker.protocol.errors import BrokerError, ErrorCode


def make(limit: int = 100, max_block: float = 5.0):
    lock = threading.Lock()
    return lock, BufferMemory(lock, limit, max_block)


def test_reserve_takes_space_until_the_limit():
    lock, m = make(100)
    with lock:
        m.reserve(60)
        m.reserve(40)
    assert m.used == 100


def test_a_full_buffer_raises_busy_after_max_block():
    lock, m = make(100, max_block=0.05)
    with lock:
        m.reserve(60)
        t0 = time.monotonic()
        with pytest.raises(BrokerError) as e:
            m.reserve(60)
    assert e.value.code == ErrorCode.BUSY and "max_block_ms" in e.value.message
    assert time.monotonic() - t0 >= 0.04 and m.used == 60


def test_a_waiting_reserve_goes_on_once_an_ack_releases_space():
    lock, m = make(100)
    with lock:
        m.reserve(80)
        m.batches = 1
    done = threading.Event()

    def sender():
        with lock:
            m.reserve(50)
        done.set()

    t = threading.Thread(target=sender)
    t.start()
    assert not done.wait(0.1)  # blocked on the full buffer
    with lock:
        m.release(80)
    assert done.wait(5)
    t.join()
    assert m.used == 50 and m.batches == 0


def test_a_message_larger_than_the_buffer_passes_when_nothing_is_held():
    lock, m = make(100, max_block=0.01)
    with lock:
        m.reserve(500)
        assert m.used == 500
        with pytest.raises(BrokerError):
            m.reserve(1)


def test_the_io_thread_never_waits():
    lock, m = make(100, max_block=30)
    m.io_thread = threading.current_thread()
    with lock:
        m.reserve(100)
        t0 = time.monotonic()
        with pytest.raises(BrokerError) as e:
            m.reserve(1)
    assert e.value.code == ErrorCode.BUSY and "callback" in e.value.message
    assert time.monotonic() - t0 < 1


def test_closed_refuses_and_wakes_a_waiter_with_shutting_down():
    lock, m = make(100)
    with lock:
        m.reserve(100)
    got = []

    def sender():
        try:
            with lock:
                m.reserve(10)
        except BrokerError as e:
            got.append(e.code)

    t = threading.Thread(target=sender)
    t.start()
    time.sleep(0.05)
    with lock:
        m.closed = True
        m.wake_all()
    t.join(5)
    assert got == [ErrorCode.BROKER_SHUTTING_DOWN]
    with lock, pytest.raises(BrokerError) as e:
        m.reserve(0)
    assert e.value.code == ErrorCode.BROKER_SHUTTING_DOWN


def test_wait_idle_returns_when_the_last_batch_is_answered_or_times_out():
    lock, m = make()
    with lock:
        m.reserve(10)
        m.reserve(10)
        m.batches = 2
        assert not m.wait_idle(0.02)

    def acks():
        for _ in range(2):
            time.sleep(0.02)
            with lock:
                m.release(10)

    t = threading.Thread(target=acks)
    t.start()
    with lock:
        assert m.wait_idle(5)
    t.join()
    assert (m.used, m.batches) == (0, 0)
