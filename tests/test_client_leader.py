"""When a Producer given several brokers asks which one leads (hpbroker/client/leader.py), on a fake clock."""

from __future__ import annotations

from hpbroker.client.leader import LeaderSearch


def test_nothing_is_asked_until_wanted():
    s = LeaderSearch(backoff=1.0)
    assert not s.start(0.0) and s.due() is None


def test_one_question_at_a_time():
    s = LeaderSearch(backoff=1.0)
    s.want()
    assert s.due() == 0.0  # at once
    assert s.start(5.0) and s.asking
    s.want()  # another NOT_LEADER while the question is out
    assert not s.start(5.1) and s.due() is None
    s.found()
    assert not s.asking and s.start(5.2)  # the NOT_LEADER that came meanwhile is asked about now


def test_no_leader_found_asks_again_after_backoff_while_anything_waits():
    s = LeaderSearch(backoff=1.0)
    s.want()
    assert s.start(10.0)
    s.none_found(10.5, still_waiting=True)
    assert not s.asking and s.due() == 11.5
    assert not s.start(11.0)
    assert s.start(11.5)


def test_no_leader_found_and_nothing_waiting_stops_asking():
    s = LeaderSearch(backoff=1.0)
    s.want()
    s.start(0.0)
    s.none_found(0.1, still_waiting=False)
    assert s.due() is None and not s.start(100.0)
    s.want()  # a later NOT_LEADER: still not before the backoff
    assert s.due() == 1.1 and not s.start(1.0) and s.start(1.1)
