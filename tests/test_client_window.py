"""The Producer's send queues, in-flight window and retries (hpbroker/client/window.py), without sockets."""

from __future__ import annotations

from types import SimpleNamespace

from hpbroker.client.window import SendWindow


def B(name: str, partition: int):
    return SimpleNamespace(name=name, partition=partition)


def names(pairs) -> list[str]:
    return [b.name for _, b in pairs]


class Acceptors:
    """The transport's map: partition p -> acceptor p % n."""

    def __init__(self, *eps: str):
        self.eps = list(eps)

    def __call__(self, partition: int) -> str:
        return self.eps[partition % len(self.eps)]


def test_at_most_max_in_flight_per_acceptor_until_answered():
    w = SendWindow(Acceptors("a", "b"), max_in_flight=2, backoff=0.1)
    for i in range(6):
        w.append(B(f"m{i}", i))
    first = w.take_sendable()
    assert [(ep, b.name) for ep, b in first] == [("a", "m0"), ("a", "m2"), ("b", "m1"), ("b", "m3")]
    assert w.take_sendable() == []  # both windows full
    w.answered("b")
    assert [(ep, b.name) for ep, b in w.take_sendable()] == [("b", "m5")]
    w.answered("a")
    w.answered("a")
    assert names(w.take_sendable()) == ["m4"]


def test_no_bound_with_acks_zero():
    w = SendWindow(Acceptors("a"), max_in_flight=None, backoff=0.1)
    for i in range(50):
        w.append(B(f"m{i}", 0))
    assert names(w.take_sendable()) == [f"m{i}" for i in range(50)]


def test_a_retry_waits_its_backoff_then_goes_to_the_front_of_its_queue():
    w = SendWindow(Acceptors("a"), max_in_flight=1, backoff=0.1)
    w.append(B("first", 0))
    (sent,) = w.take_sendable()
    w.append(B("second", 0))
    w.answered("a")
    w.retry_later(sent[1], now=10.0)  # "first" got BUSY
    assert w.next_retry() == 10.1
    w.release_retries(10.05)
    assert names(w.take_sendable()) == ["second"]  # the retry is not due yet
    w.answered("a")
    w.append(B("third", 0))
    w.release_retries(10.1)
    assert w.next_retry() is None
    assert names(w.take_sendable()) == ["first"]  # ahead of "third"


def test_retries_due_together_keep_the_order_they_failed_in():
    w = SendWindow(Acceptors("a"), max_in_flight=None, backoff=1.0)
    for name in ("r1", "r2", "r3"):
        w.retry_later(B(name, 0), now=5.0)
    w.append(B("new", 0))
    w.release_retries(6.0)
    assert names(w.take_sendable()) == ["r1", "r2", "r3", "new"]


def test_regroup_moves_waiting_batches_to_the_new_leaders_acceptors_in_order():
    acceptors = Acceptors("old")
    w = SendWindow(acceptors, max_in_flight=1, backoff=0.1)
    for i in range(4):
        w.append(B(f"p{i % 2}-{i}", i % 2))
    w.take_sendable()  # p0-0 in flight on old
    acceptors.eps = ["x", "y"]
    w.regroup()
    got = sorted((ep, b.name) for ep, b in w.take_sendable())
    assert got == [("x", "p0-2"), ("y", "p1-1")]
    w.answered("x")
    w.answered("y")
    assert [(ep, b.name) for ep, b in w.take_sendable()] == [("y", "p1-3")]


def test_take_all_hands_back_everything_not_in_flight():
    w = SendWindow(Acceptors("a"), max_in_flight=1, backoff=0.1)
    for i in range(3):
        w.append(B(f"q{i}", 0))
    w.take_sendable()
    w.retry_later(B("r", 0), now=0.0)
    assert [b.name for b in w.take_all()] == ["q1", "q2", "r"]
    assert w.take_all() == [] and w.next_retry() is None


def TB(name: str, topic: str, partition: int):
    return SimpleNamespace(name=name, topic=topic, partition=partition)


def test_per_partition_lets_out_one_batch_per_partition_and_retries_are_never_overtaken():
    """ordered=True: a partition's second batch waits until its first is done
    for good, through the first one's retries; other partitions go on."""
    w = SendWindow(Acceptors("a"), max_in_flight=5, backoff=0.1, per_partition=True)
    b0, b1, b2 = TB("t0-0", "t", 0), TB("t0-1", "t", 0), TB("t0-2", "t", 0)
    c0, d0 = TB("t1-0", "t", 1), TB("u0-0", "u", 0)
    for b in (b0, b1, c0, b2, d0):
        w.append(b)
    assert names(w.take_sendable()) == ["t0-0", "t1-0", "u0-0"]  # one per (topic, partition)
    w.answered("a")
    w.retry_later(b0, now=0.0)  # t/0's batch failed retriably: t0-1 must not go meanwhile
    assert w.take_sendable() == []
    w.release_retries(now=0.2)
    assert names(w.take_sendable()) == ["t0-0"]
    w.answered("a")
    w.done(b0)  # acknowledged: the next of t/0 is let out
    assert names(w.take_sendable()) == ["t0-1"]
    w.done(TB("t0-1", "t", 0))  # not the batch that is out (say it failed to encode): changes nothing
    assert w.take_sendable() == []
    w.answered("a")
    w.done(b1)
    assert names(w.take_sendable()) == ["t0-2"]
    assert [b.name for b in w.take_all()] == []  # everything else is out or done
    w2 = SendWindow(Acceptors("a"), max_in_flight=1, backoff=0.1, per_partition=True)
    for b in (b0, b1, b2):
        w2.append(b)
    assert [b.name for b in w2.take_all()] == ["t0-0", "t0-1", "t0-2"]  # parked ones too, in order


def test_take_waiting_takes_what_is_not_in_flight_and_frees_its_partition():
    """The broker went down: a spilling producer takes the batches that wait
    (queued, parked, awaiting a retry) of some partitions; what is in flight
    stays, and a partition whose batch out was taken is free again."""
    w = SendWindow(Acceptors("a"), max_in_flight=5, backoff=0.1, per_partition=True)
    b0, b1, b2 = TB("t0-0", "t", 0), TB("t0-1", "t", 0), TB("t0-2", "t", 0)
    c0, c1 = TB("t1-0", "t", 1), TB("t1-1", "t", 1)
    for b in (b0, b1, b2, c0, c1):
        w.append(b)
    assert names(w.take_sendable()) == ["t0-0", "t1-0"]
    w.answered("a")
    w.retry_later(b0, now=0.0)  # t/0's batch lost its connection; t/1's is still in flight
    taken = w.take_waiting(lambda b: b.topic == "t")
    assert sorted(b.name for b in taken) == ["t0-0", "t0-1", "t0-2", "t1-1"]
    assert w.next_retry() is None and w.take_sendable() == []
    w.append(TB("t0-3", "t", 0))  # t/0 holds nothing any more: a new batch goes at once
    assert names(w.take_sendable()) == ["t0-3"]
    w.append(TB("t1-2", "t", 1))  # t/1's batch is still out: the next one parks
    assert w.take_sendable() == []
    w.done(c0)
    assert names(w.take_sendable()) == ["t1-2"]
