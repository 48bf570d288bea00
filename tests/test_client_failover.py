"""Clients given several brokers ("tcp://a,tcp://b") follow a promotion.

Real master and slave on loopback: a Producer and a Consumer given both
URLs write to and read from the master; the master is killed with
SIGKILL; batches sent meanwhile are retried, and once the slave is
promoted both clients find it by themselves and carry on.
"""

from __future__ import annotations

import time

import pytest

from brokerproc import free_port
from hpbroker.client import Consumer, Producer
from hpbroker.client.transport import parse_bootstrap
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.ring import cleanup_stale
from test_replication import PARTITIONS, master, promote, slave, stats, wait_until


def test_a_bootstrap_list_is_parsed_and_a_bad_url_named():
    assert parse_bootstrap("tcp://a:1, tcp://b:2,") == ["tcp://a:1", "tcp://b:2"]
    assert parse_bootstrap(["tcp://a:1"]) == ["tcp://a:1"]
    with pytest.raises(ValueError, match="'b:2'"):
        parse_bootstrap("tcp://a:1,b:2")
    with pytest.raises(ValueError, match="no broker URL"):
        parse_bootstrap(" , ")


def test_no_broker_of_the_list_answering_is_one_clear_error():
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BrokerError) as e:
        Consumer(urls, "t", connect_timeout_ms=500)
    assert e.value.code == ErrorCode.REQUEST_TIMED_OUT and "answered" in str(e.value)
    assert time.monotonic() - t0 < 10


def drain(c: Consumer, n: int, timeout_s: float = 60.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += [msg.value for msg in c.poll(200)]
    return out


def test_a_producer_and_a_consumer_given_both_brokers_follow_a_promotion(tmp_path):
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    both = f"{a.url},{b.url}"
    p = c = None
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        p = Producer(both, acks=1, linger_ms=1, request_timeout_ms=1500, connect_timeout_ms=1500, retries=30,
                     retry_backoff_ms=200)
        c = Consumer(both, "rep", auto_offset_reset="earliest", request_timeout_ms=1500, connect_timeout_ms=1500,
                     fetch_max_wait_ms=200)
        before = [f"before-{i}".encode() for i in range(200)]
        futs = [p.send("rep", v, partition=i % PARTITIONS) for i, v in enumerate(before)]
        p.flush(30)
        assert all(f.result(0).offset >= 0 for f in futs)
        assert sorted(drain(c, len(before))) == sorted(before)

        a.kill()
        after = [f"after-{i}".encode() for i in range(200)]
        futs = [p.send("rep", v, partition=i % PARTITIONS) for i, v in enumerate(after)]  # nobody answers them yet
        time.sleep(1.0)
        promote(b)
        for f in futs:
            f.result(60)  # retried on the promoted slave (alone now: acks=all would be refused), found by itself
        got = drain(c, len(after))  # the consumer moved over too, at the offsets it had reached
        assert set(got) == set(after)
    finally:
        if p is not None:
            p.close(10)
        if c is not None:
            c.close()
        b.stop(), a.stop()
        cleanup_stale(f"p{a.port}")  # the killed master's rings (a restart would remove them)


def test_a_request_to_a_broker_that_dies_is_answered_at_once_not_at_its_deadline(tmp_path):
    from brokerproc import BrokerProcess
    from hpbroker.client.transport import Transport
    from hpbroker.protocol import messages as m

    b = BrokerProcess(tmp_path / "x", args=("--partitions", "1")).start()
    t = Transport(b.url, request_timeout_ms=60_000)
    try:
        t.metadata(["t"], timeout_ms=10_000)
        box = []
        t.send(t.acceptors[0], m.Fetch(id=t.next_id(), topic="t", partition=0, offset=0, max_wait_ms=30_000),
               on_reply=lambda rep, _p: box.append(rep))
        # the long poll is parked on the broker: the acceptor answers one
        # connection in order, and a request sent behind it is answered first
        behind = []
        t.send(t.acceptors[0], m.ListOffsets(id=t.next_id(), topic="t", partition=0, spec=m.LATEST),
               on_reply=lambda rep, _p: behind.append(rep))
        while not behind:  # ends by the transport's 60 s deadline at worst
            t.poll(100)
        assert behind[0].code == 0 and box == [], (behind, box)
        b.kill()
        t0 = time.monotonic()
        while not box and time.monotonic() - t0 < 25:  # inside the 30 s long poll and the 60 s request timeout
            t.poll(100)
        assert box and box[0].code == ErrorCode.REQUEST_TIMED_OUT and "lost the connection" in box[0].message
    finally:
        t.close()
        b.stop()
        cleanup_stale(f"p{b.port}")
