"""The catch-up scheduler (hpbroker/replication/catchup.py) and stall detection
(hpbroker/replication/stalls.py), on a hand-moved clock."""

from __future__ import annotations

import pytest

from hpbroker.replication.catchup import CatchUp
from hpbroker.replication.pacing import ByteRate
from hpbroker.replication.stalls import StallWatch


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def scheduler(rate: int = 0, burst: int = 4096, clock=None) -> CatchUp:
    clock = clock or Clock()
    return CatchUp(ByteRate(rate, burst, clock), clock)


def test_one_read_at_a_time_in_the_order_asked_and_never_twice():
    c = scheduler()
    for key in ["t/0", "t/1", "t/0", "t/2"]:
        c.want(key)
    assert list(c.queue) == ["t/0", "t/1", "t/2"] and c.pending == 3
    assert c.next_read() == "t/0"
    assert c.next_read() is None  # one read out at a time
    c.want("t/0")  # being read: not queued again
    assert c.busy("t/0") and c.pending == 3
    c.answered("t/1")  # not the read that is out
    assert c.next_read() is None
    c.answered("t/0")
    assert [c.next_read(), c.reads] == ["t/1", 2]
    assert not c.busy("t/0")


def test_an_answer_counts_its_bytes():
    c = scheduler()
    c.want("t/0")
    c.next_read()
    c.answered("t/0")
    c.received(3000)
    assert c.bytes == 3000 and c.pending == 0


def test_the_rate_holds_a_due_read_back_and_counts_the_wait():
    clock = Clock()
    c = scheduler(rate=1000, burst=4000, clock=clock)
    c.want("t/0")
    assert c.next_read() == "t/0"
    c.answered("t/0")
    c.received(6000)  # 2000 bytes over the burst: 2 s of debt
    c.want("t/1")
    assert c.next_read() is None
    clock.t += 1.5
    assert c.next_read() is None
    clock.t += 0.6
    assert c.next_read() == "t/1"
    assert c.throttled_s == pytest.approx(2.1)


def test_a_connection_that_ends_forgets_the_reads_and_ends_the_hold():
    clock = Clock()
    c = scheduler(rate=1000, burst=4000, clock=clock)
    c.received(8000)
    c.want("t/0")
    c.want("t/1")
    assert c.next_read() is None  # held back
    clock.t += 0.5
    c.reset()
    assert c.pending == 0 and c.inflight is None
    assert c.throttled_s == pytest.approx(0.5)
    clock.t += 10
    c.reset()
    assert c.throttled_s == pytest.approx(0.5)  # no hold was running


def test_with_no_rate_nothing_is_ever_held_back():
    c = scheduler()
    for i in range(100):
        c.want(f"t/{i}")
        assert c.next_read() == f"t/{i}"
        c.answered(f"t/{i}")
        c.received(1 << 30)
    assert c.throttled_s == 0.0


# -- stalls ---------------------------------------------------------------------------------------


def test_a_partition_behind_that_did_not_move_between_two_keep_alives_is_stalled():
    w = StallWatch()
    assert w.keepalive({"t/0": 20}, {"t/0": 10}, {}) == []  # behind, once: maybe on the way
    assert w.keepalive({"t/0": 25}, {"t/0": 10}, {}) == ["t/0"]
    assert w.keepalive({"t/0": 25}, {"t/0": 10}, {}) == ["t/0"]  # still: asked again (the read is skipped if queued)


def test_a_partition_that_moved_or_caught_up_is_not_stalled():
    w = StallWatch()
    w.keepalive({"t/0": 20, "t/1": 20}, {"t/0": 10, "t/1": 10}, {})
    assert w.keepalive({"t/0": 20, "t/1": 20}, {"t/0": 12, "t/1": 20}, {}) == []
    # caught up is forgotten: behind again later starts over
    assert w.keepalive({"t/1": 30}, {"t/1": 20}, {}) == []


def test_a_partition_with_records_in_flight_to_its_writer_is_not_stalled():
    w = StallWatch()
    w.keepalive({"t/0": 20}, {"t/0": 10}, {"t/0": 1})
    assert w.keepalive({"t/0": 20}, {"t/0": 10}, {"t/0": 1}) == []
    assert w.keepalive({"t/0": 20}, {"t/0": 10}, {"t/0": 0}) == ["t/0"]


def test_a_partition_absent_from_a_keep_alive_starts_over():
    w = StallWatch()
    w.keepalive({"t/0": 20}, {"t/0": 10}, {})
    w.keepalive({}, {"t/0": 10}, {})
    assert w.keepalive({"t/0": 20}, {"t/0": 10}, {}) == []
