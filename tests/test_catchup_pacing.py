"""The catch-up byte rate (replication.catchup_rate_bytes), on a hand-moved clock."""

import pytest

from hpbroker.replication.pacing import ByteRate


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_no_limit_never_waits():
    r = ByteRate(0, 4096, Clock())
    r.spend(10**12)
    assert r.wait_s() == 0.0


def test_a_burst_goes_at_once_then_the_debt_is_paid_at_the_rate():
    c = Clock()
    r = ByteRate(1000, 4000, c)
    assert r.wait_s() == 0.0
    r.spend(4000)  # the whole burst
    r.spend(2000)  # and a read that brought more than was left
    assert r.wait_s() == pytest.approx(2.0)
    c.t += 1.5
    assert r.wait_s() == pytest.approx(0.5)
    c.t += 0.5
    assert r.wait_s() < 1e-6
    c.t += 0.001
    assert r.wait_s() == 0.0


def test_idle_time_refills_no_more_than_the_burst():
    c = Clock()
    r = ByteRate(1000, 4000, c)
    r.spend(4000)
    c.t += 3600  # an hour idle buys one burst, not 3.6 MB
    r.spend(4000)
    assert r.wait_s() > 0
    r.spend(1000)
    assert r.wait_s() == pytest.approx(1.0)


def test_reads_over_a_long_stretch_keep_to_rate_times_time_plus_one_burst():
    c = Clock()
    rate, burst, read = 1000, 4000, 700
    r = ByteRate(rate, burst, c)
    sent = 0
    for _ in range(100_000):
        w = r.wait_s()
        if w > 0:
            c.t += w
            continue
        r.spend(read)
        sent += read
        if c.t - 100.0 >= 60:
            break
    elapsed = c.t - 100.0
    assert sent <= rate * elapsed + burst + read
    assert sent >= rate * elapsed  # and it does not hold back more than it must


@pytest.mark.parametrize("rate,burst", [(-1, 4096), (1000, 0)])
def test_nonsense_is_refused(rate, burst):
    with pytest.raises(ValueError):
        ByteRate(rate, burst, Clock())
