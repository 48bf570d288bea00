"""Producer, Consumer and Admin against a real broker (the ``broker`` fixture)."""

from __future__ import annotations

import pytest

from brokerproc import BrokerProcess
from hpbroker import Admin, BrokerError, Consumer, Producer, RecordMetadata
from hpbroker import batch
from hpbroker.protocol import ErrorCode


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One standalone broker for the module's tests (4 partitions, topics
    auto-created), as tests/conftest.py's but started once: each test uses
    topics of its own, and none restarts or stops it."""
    b = BrokerProcess(tmp_path_factory.mktemp("client") / "data", args=("--partitions", "4"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _drain(c: Consumer, n: int, max_polls: int = 200) -> list:
    got = []
    for _ in range(max_polls):
        if len(got) >= n:
            break
        got += c.poll(timeout_ms=500, max_records=100_000)
    return got


def test_round_trip_with_keys(broker):
    with Producer(broker.url, acks="all", linger_ms=2) as p:
        futs = [p.send("keys", b"value-%d" % i, key=b"key-%d" % (i % 5)) for i in range(200)]
        p.flush(60)
        mds = [f.result() for f in futs]
    parts_of_key = {}
    for i, md in enumerate(mds):
        assert md.topic == "keys" and md.offset >= 0
        parts_of_key.setdefault(i % 5, set()).add(md.partition)
    assert all(len(s) == 1 for s in parts_of_key.values())
    with Consumer(broker.url, "keys", auto_offset_reset="earliest") as c:
        got = _drain(c, 200)
    assert len(got) == 200
    by_value = {m.value: m for m in got}
    for i, md in enumerate(mds):
        m = by_value[b"value-%d" % i]
        assert (m.partition, m.offset, m.key) == (md.partition, md.offset, b"key-%d" % (i % 5))


def test_send_batch_offsets_are_contiguous_and_partition_order_holds(broker):
    with Producer(broker.url, max_in_flight=5) as p:
        futs = [p.send_batch("order", [b"%d-%d" % (j, i) for i in range(100)], partition=2) for j in range(20)]
        p.flush(60)
        bases = [f.result().offset for f in futs]
    assert bases == [100 * j for j in range(20)]
    with Consumer(broker.url, "order", partitions=[2], auto_offset_reset="earliest") as c:
        got = _drain(c, 2000)
    assert [m.offset for m in got] == list(range(2000))
    assert [m.value for m in got] == [b"%d-%d" % (j, i) for j in range(20) for i in range(100)]


def test_seek_seek_to_end_and_offsets_for_times(broker):
    with Producer(broker.url) as p:
        assert p.send_batch("seek", [b"a", b"b", b"c"], partition=0, timestamp_ms=1_000_000).result(30) == RecordMetadata("seek", 0, 0)
        assert p.send_batch("seek", [b"d", b"e"], partition=0, timestamp_ms=2_000_000).result(30).offset == 3
    with Consumer(broker.url, "seek", partitions=[0], auto_offset_reset="latest") as c:
        assert c.position(0) == 5
        c.seek(0, 1)  # the middle of the first batch
        got = _drain(c, 4)
        assert [(m.offset, m.value) for m in got] == [(1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")]
        assert c.offsets_for_times({0: 1_500_000}) == {0: 3}
        c.seek_to_beginning()
        assert c.position(0) == 0
        c.seek_to_end()
        assert c.position(0) == 5
        assert c.poll(timeout_ms=100) == []
        c.seek(0, 3)
        raw = []
        for _ in range(50):
            raw = c.poll_batches(timeout_ms=500)
            if raw:
                break
        (rb,) = raw
        assert (rb.partition, rb.base_offset, rb.start_offset, rb.record_count) == (0, 3, 3, 2)
        assert [r.value for r in batch.records_of(rb.data)] == [b"d", b"e"]


def test_too_large_batch_reaches_the_future_with_the_brokers_code(broker):
    with Admin(broker.url) as a:
        limit = a.metadata(None).max_batch_bytes or (8 << 20)
    with Producer(broker.url, retries=0) as p:
        small = p.send("big", b"ok", partition=1)
        big = p.send("big", b"x" * (limit + 1024), partition=1)
        p.flush(60)
    assert small.result().offset == 0
    with pytest.raises(BrokerError) as ei:
        big.result()
    assert ei.value.code == ErrorCode.MESSAGE_TOO_LARGE
    assert ei.value.message


def test_acks_zero_resolves_without_offsets(broker):
    with Producer(broker.url, acks=0) as p:
        f = p.send_batch("fire", [b"x"] * 10, partition=3)
        p.flush(30)
    assert f.result() == RecordMetadata("fire", 3, -1)
    with Consumer(broker.url, "fire", partitions=[3], auto_offset_reset="earliest") as c:
        assert len(_drain(c, 10)) == 10


def test_admin(broker):
    with Admin(broker.url) as a:
        assert a.create_topic("made", 3) == 3
        with pytest.raises(BrokerError) as ei:
            a.create_topic("made", 3)
        assert ei.value.code == ErrorCode.TOPIC_ALREADY_EXISTS
        assert a.create_topic("made", 3, if_not_exists=True) == 3
        assert a.list_topics()["made"] == 3
        with Producer(broker.url) as p:
            p.send_batch("made", [b"1", b"2"], partition=1).result(30)
        rows = a.describe("made")
        assert [(r.partition, r.earliest, r.latest) for r in rows] == [(0, 0, 0), (1, 0, 2), (2, 0, 0)]
        assert a.list_offsets("made", 1, -1) == 2
        with pytest.raises(BrokerError) as ei:
            a.describe("no-such-topic")
        assert ei.value.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_several_acceptors_and_writers(tmp_path):
    """Partitions spread over acceptors p % n; the client follows metadata."""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4", "--acceptors", "2", "--writers", "2"))
    b.start()
    try:
        with Admin(b.url) as a:
            md = a.metadata(["multi"])
            assert len(md.acceptors) == 2 and md.acceptors[0] == b.url
        with Producer(b.url) as p:
            futs = {part: p.send_batch("multi", [b"%d-%d" % (part, i) for i in range(50)], partition=part) for part in range(4)}
            p.flush(60)
            assert {part: f.result().offset for part, f in futs.items()} == {0: 0, 1: 0, 2: 0, 3: 0}
        with Consumer(b.url, "multi", auto_offset_reset="earliest") as c:
            got = _drain(c, 200)
        assert sorted((m.partition, m.value) for m in got) == sorted(
            (part, b"%d-%d" % (part, i)) for part in range(4) for i in range(50))
    finally:
        b.stop()


def test_futures_and_callbacks(broker):
    """send() returns a light future over its batch's one Future: results,
    callbacks (on the I/O thread, in send order) and errbacks per message."""
    import threading

    seen, threads, errors = [], set(), []

    def cb(md, exc):
        threads.add(threading.current_thread().name)
        seen.append((md, exc))

    with Producer(broker.url, linger_ms=50) as p:
        futs = [p.send("cb", b"m%d" % i, partition=1, callback=cb) for i in range(10)]
        also = []
        futs[3].add_callback(also.append).add_errback(errors.append)
        done_with = []
        futs[4].add_done_callback(done_with.append)
        p.flush(60)
        late = []
        futs[5].add_callback(late.append)  # already done: runs now, on this thread
    assert [f.result(10) for f in futs] == [RecordMetadata("cb", 1, i) for i in range(10)]
    assert [f.get(10).offset for f in futs] == list(range(10))
    assert all(f.done() and f.exception() is None and not f.cancel() for f in futs)
    assert seen == [(RecordMetadata("cb", 1, i), None) for i in range(10)]
    assert threads == {"hpbroker-producer-io"}
    assert also == [RecordMetadata("cb", 1, 3)] and errors == []
    assert done_with == [futs[4]]
    assert late == [RecordMetadata("cb", 1, 5)]


def test_acks_zero_callbacks_get_offset_minus_one(broker):
    seen = []
    with Producer(broker.url, acks=0) as p:
        f = p.send("z", b"x", partition=2, callback=lambda md, exc: seen.append((md, exc)))
        f.add_callback(lambda md: seen.append(("cb", md)))
        p.flush(30)
    assert f.result() == RecordMetadata("z", 2, -1)
    assert seen == [(RecordMetadata("z", 2, -1), None), ("cb", RecordMetadata("z", 2, -1))]


def test_send_takes_bytes_and_copies_buffers(broker):
    buf = bytearray(b"before")
    with Producer(broker.url, linger_ms=50) as p:
        with pytest.raises(TypeError):
            p.send("bytes", "text", partition=0)
        with pytest.raises(TypeError):
            p.send("bytes", b"v", key="text", partition=0)
        f = p.send("bytes", buf, key=memoryview(b"k"), partition=0)
        buf[:] = b"after!"  # the producer took a copy
        assert f.result(30).offset == 0
    with Consumer(broker.url, "bytes", partitions=[0], auto_offset_reset="earliest") as c:
        (m,) = _drain(c, 1)
    assert (m.key, m.value) == (b"k", b"before")


def test_long_poll_wakes_on_new_data(broker):
    """The fetch waits at the broker (up to a minute here); new data must
    answer it at once, well within the 30 s poll below."""
    with Consumer(broker.url, "lp", partitions=[3], auto_offset_reset="latest", fetch_max_wait_ms=60_000) as c:
        assert c.poll(timeout_ms=50) == []  # the long-poll fetch is now parked at the broker
        with Producer(broker.url) as p:
            p.send("lp", b"hello", partition=3).result(30)
        got = c.poll(timeout_ms=30_000)
    assert [(m.offset, m.value) for m in got] == [(0, b"hello")]


def test_unreachable_broker_is_reported():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here now
    url = f"tcp://127.0.0.1:{port}"
    with pytest.raises(BrokerError) as ei:
        Consumer(url, "x", connect_timeout_ms=300)
    assert ei.value.code == ErrorCode.REQUEST_TIMED_OUT
    with pytest.raises(BrokerError) as ei:
        Admin(url, connect_timeout_ms=300).list_topics()
    assert ei.value.code == ErrorCode.REQUEST_TIMED_OUT
    p = Producer(url, connect_timeout_ms=300)
    try:
        with pytest.raises(BrokerError) as ei:
            p.send("x", b"y")
        assert ei.value.code == ErrorCode.REQUEST_TIMED_OUT
    finally:
        p.close(1)
