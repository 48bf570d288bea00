"""Client logic against an in-process fake broker (a thread speaking the
wire protocol over a ROUTER on 127.0.0.1 with an in-memory log).

The fake is deliberately small: it stamps offsets, answers fetches with
whole batches (long poll included), and can be told to fail requests, so
client behaviour (batching, retries, errors reaching futures, seeks,
partial-batch skipping) is tested without the real broker's processes.
tests/test_client.py runs the same API against the real broker.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from hpbroker import batch
from hpbroker.client import Admin, BrokerError, Consumer, ErrorCode, Producer, RecordMetadata
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m


class FakeBroker:
    def __init__(self, partitions: int = 4, acceptors: int = 2, max_batch_bytes: int = 1 << 20):
        self.ctx = zmq.Context()
        self.socks = []
        self.urls = []
        for _ in range(acceptors):
            s = self.ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.LINGER, 0)
            port = s.bind_to_random_port("tcp://127.0.0.1")
            self.socks.append(s)
            self.urls.append(f"tcp://127.0.0.1:{port}")
        self.url = self.urls[0]
        self.partitions = partitions
        self.max_batch_bytes = max_batch_bytes
        self.logs: dict[tuple[str, int], list[bytearray]] = {}
        self.topics: dict[str, int] = {}
        self.fail_next: list[int] = []  # codes for the next produce requests
        self.requests: list = []
        self.parked: list = []
        self.stop_flag = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop_flag = True
        self.thread.join()
        for s in self.socks:
            s.close()
        self.ctx.term()

    def hwm(self, tp):
        log = self.logs.get(tp, [])
        return batch.peek_base_offset(log[-1]) + batch.peek_count(log[-1]) if log else 0

    def run(self):
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        while not self.stop_flag:
            for s, _ in poller.poll(20):
                ident, *frames = s.recv_multipart()
                self.handle(s, ident, frames)
            now = time.monotonic()
            for p in list(self.parked):
                s, ident, req, deadline = p
                if self.hwm((req.topic, req.partition)) > req.offset or now >= deadline:
                    self.parked.remove(p)
                    self.fetch(s, ident, req)

    def reply(self, s, ident, rep, payloads=()):
        s.send_multipart([ident, *codec.encode_reply(rep, payloads)])

    def handle(self, s, ident, frames):
        try:
            req, payloads = codec.decode_request(frames)
        except Exception as e:
            self.reply(s, ident, m.ErrorReply(id=e.id, code=e.code, message=e.message))
            return
        self.requests.append(req)
        match req:
            case m.Metadata():
                names = list(self.topics) if req.topics is None else req.topics
                for n in names:
                    self.topics.setdefault(n, self.partitions)
                tops = [m.TopicMetadata(n, [m.PartitionMetadata(p, 0, 0) for p in range(self.topics[n])]) for n in names]
                self.reply(s, ident, m.MetadataReply(id=req.id, acceptors=self.urls, topics=tops, cluster_id="fake",
                                                     max_batch_bytes=self.max_batch_bytes,
                                                     max_request_bytes=2 * self.max_batch_bytes))
            case m.Produce():
                if self.fail_next:
                    code = self.fail_next.pop(0)
                    self.reply(s, ident, m.ProduceReply(id=req.id, code=code, message="injected"))
                    return
                tp = (req.topic, req.partition)
                assert self.socks.index(s) == req.partition % len(self.socks), "partition sent to the wrong acceptor"
                bases = []
                for f in payloads:
                    if len(f) > self.max_batch_bytes:
                        self.reply(s, ident, m.ProduceReply(id=req.id, code=ErrorCode.MESSAGE_TOO_LARGE, message="too big"))
                        return
                    b = bytearray(f)
                    batch.check_batch(b, 0, len(b))
                    base = self.hwm(tp)
                    batch.stamp(b, base, 0)
                    self.logs.setdefault(tp, []).append(b)
                    bases.append(base)
                if req.acks:
                    self.reply(s, ident, m.ProduceReply(id=req.id, base_offsets=bases, partition=req.partition))
            case m.Fetch():
                tp = (req.topic, req.partition)
                if req.offset > self.hwm(tp):
                    self.reply(s, ident, m.FetchReply(id=req.id, code=ErrorCode.OFFSET_OUT_OF_RANGE, message="oor"))
                elif req.offset == self.hwm(tp) and req.max_wait_ms:
                    self.parked.append((s, ident, req, time.monotonic() + req.max_wait_ms / 1000))
                else:
                    self.fetch(s, ident, req)
            case m.ListOffsets():
                tp = (req.topic, req.partition)
                if req.spec == -2:
                    off = 0
                elif req.spec == -1:
                    off = self.hwm(tp)
                else:
                    off = next((batch.peek_base_offset(b) for b in self.logs.get(tp, [])
                                if batch.read_header(b).max_timestamp >= req.spec), self.hwm(tp))
                self.reply(s, ident, m.ListOffsetsReply(id=req.id, offset=off))
            case m.CreateTopic():
                if req.topic in self.topics and not req.if_not_exists:
                    self.reply(s, ident, m.CreateTopicReply(id=req.id, code=ErrorCode.TOPIC_ALREADY_EXISTS, message="exists"))
                    return
                self.topics.setdefault(req.topic, req.partitions)
                self.reply(s, ident, m.CreateTopicReply(id=req.id, partitions=self.topics[req.topic]))

    def fetch(self, s, ident, req):
        tp = (req.topic, req.partition)
        out = bytearray()
        for b in self.logs.get(tp, []):
            if batch.peek_base_offset(b) + batch.peek_count(b) <= req.offset:
                continue
            if out and len(out) + len(b) > req.max_bytes:
                break
            out += b
        self.reply(s, ident, m.FetchReply(id=req.id, high_watermark=self.hwm(tp), log_start_offset=0), [bytes(out)])


@pytest.fixture
def fake():
    b = FakeBroker()
    yield b
    b.close()


def test_send_and_consume_with_keys(fake):
    with Producer(fake.url, acks="all", linger_ms=5) as p:
        futs = [p.send("logs", b"v%d" % i, key=b"k%d" % (i % 3)) for i in range(30)]
        p.flush(10)
        mds = [f.result() for f in futs]
    by_key = {}
    for i, md in enumerate(mds):
        by_key.setdefault(i % 3, set()).add(md.partition)
    assert all(len(s) == 1 for s in by_key.values()), "a key always maps to one partition"
    c = Consumer(fake.url, "logs", auto_offset_reset="earliest", fetch_max_wait_ms=50)
    got = []
    while len(got) < 30:
        got += c.poll(timeout_ms=2000)
    c.close()
    assert sorted(m.value for m in got) == sorted(b"v%d" % i for i in range(30))
    assert all(m.key == b"k%d" % (int(m.value[1:]) % 3) for m in got)
    for md, i in zip(mds, range(30)):
        assert any(m.partition == md.partition and m.offset == md.offset and m.value == b"v%d" % i for m in got)


def test_send_batch_is_contiguous_and_ordered(fake):
    with Producer(fake.url) as p:
        f1 = p.send_batch("t", [b"a%d" % i for i in range(100)], partition=1)
        f2 = p.send_batch("t", [b"b%d" % i for i in range(50)], partition=1)
        assert f1.result(10) == RecordMetadata("t", 1, 0)
        assert f2.result(10) == RecordMetadata("t", 1, 100)
    c = Consumer(fake.url, "t", partitions=[1], auto_offset_reset="earliest", fetch_max_wait_ms=10)
    got = []
    while len(got) < 150:
        got += c.poll(1000, max_records=7)
    assert [m.offset for m in got] == list(range(150))
    assert [m.value for m in got] == [b"a%d" % i for i in range(100)] + [b"b%d" % i for i in range(50)]


def test_big_send_batch_splits_into_several_batches(fake):
    values = [bytes([i % 256]) * 1000 for i in range(3000)]  # 3 MB > 1 MiB batch limit
    with Producer(fake.url) as p:
        assert p.send_batch("big", values, partition=0).result(20).offset == 0
    assert len(fake.logs[("big", 0)]) > 2
    c = Consumer(fake.url, "big", partitions=[0], auto_offset_reset="earliest", fetch_max_wait_ms=10)
    got = []
    while len(got) < 3000:
        got += c.poll(1000, max_records=100_000)
    assert [m.value for m in got] == values


def test_retriable_errors_are_retried_and_others_reach_the_future(fake):
    fake.fail_next = [ErrorCode.BUSY, ErrorCode.NOT_LEADER]
    with Producer(fake.url, retry_backoff_ms=1) as p:
        assert p.send("r", b"x", partition=0).result(10).offset == 0
        fake.fail_next = [ErrorCode.CORRUPT_BATCH]
        with pytest.raises(BrokerError) as ei:
            p.send("r", b"y", partition=0).result(10)
        assert ei.value.code == ErrorCode.CORRUPT_BATCH and ei.value.message == "injected"
        fake.fail_next = [ErrorCode.BUSY] * 3
    with Producer(fake.url, retries=2, retry_backoff_ms=1) as p:
        with pytest.raises(BrokerError) as ei:
            p.send_batch("r", [b"z"], partition=0).result(10)
        assert ei.value.code == ErrorCode.BUSY


def test_too_large_message_fails_alone(fake):
    with Producer(fake.url, linger_ms=50) as p:
        small = p.send("x", b"s", partition=0)
        big = p.send("x", b"B" * (2 << 20), partition=0)
        small2 = p.send("x", b"s2", partition=0)
        p.flush(10)
    assert small.result().offset == 0 and small2.result().offset == 1
    assert big.exception().code == ErrorCode.MESSAGE_TOO_LARGE


def test_callbacks_and_acks_zero(fake):
    seen = []
    done = threading.Event()
    with Producer(fake.url, acks=0) as p:
        f = p.send("z", b"x", partition=2, callback=lambda md, exc: (seen.append((md, exc)), done.set()))
        f.add_callback(lambda md: seen.append(("cb", md)))
        p.flush(10)
    done.wait(5)
    assert f.result() == RecordMetadata("z", 2, -1)
    assert (RecordMetadata("z", 2, -1), None) in seen


def test_buffer_memory_bounds_send(fake):
    fake.fail_next = [ErrorCode.BUSY] * 1000  # the broker never takes anything
    p = Producer(fake.url, buffer_memory=10_000, max_block_ms=200, retries=1000, retry_backoff_ms=50)
    try:
        p.send("m", b"x" * 8000, partition=0)
        with pytest.raises(BrokerError) as ei:
            p.send("m", b"x" * 8000, partition=0)
        assert ei.value.code == ErrorCode.BUSY
    finally:
        fake.fail_next = []
        p.close(10)


def test_seek_and_offsets(fake):
    with Producer(fake.url) as p:
        p.send_batch("s", [b"a", b"b", b"c"], partition=0, timestamp_ms=1000).result(10)
        p.send_batch("s", [b"d", b"e"], partition=0, timestamp_ms=2000).result(10)
    c = Consumer(fake.url, "s", partitions=[0], auto_offset_reset="latest", fetch_max_wait_ms=10)
    assert c.position(0) == 5
    assert c.poll(100) == []
    c.seek(0, 1)  # the middle of the first batch: a and the rest of it are skipped/returned
    got = []
    while len(got) < 4:
        got += c.poll(1000)
    assert [m.value for m in got] == [b"b", b"c", b"d", b"e"]
    assert c.offsets_for_times({0: 1500}) == {0: 3}
    c.seek(0, 4)
    raw = []
    while not raw:
        raw = c.poll_batches(1000)
    (rb,) = raw
    assert (rb.partition, rb.record_count, rb.base_offset, rb.start_offset) == (0, 2, 3, 4)
    assert [r.value for r in batch.records_of(rb.data)] == [b"d", b"e"]
    c.seek_to_beginning()
    assert c.position(0) == 0
    c.seek_to_end()
    assert c.position(0) == 5
    c.close()


def test_long_poll_wakes_on_new_data(fake):
    c = Consumer(fake.url, "lp", partitions=[3], auto_offset_reset="latest", fetch_max_wait_ms=5000)
    assert c.poll(50) == []
    with Producer(fake.url) as p:
        p.send("lp", b"hello", partition=3).result(10)
    got = []
    while not got:
        got = c.poll(10_000)
    assert got[0].value == b"hello"
    c.close()


def test_admin(fake):
    with Admin(fake.url) as a:
        assert a.create_topic("new", 3) == 3
        with pytest.raises(BrokerError) as ei:
            a.create_topic("new", 3)
        assert ei.value.code == ErrorCode.TOPIC_ALREADY_EXISTS
        assert a.list_topics() == {"new": 3}
        assert [pi.partition for pi in a.describe("new")] == [0, 1, 2]
        with pytest.raises(BrokerError):
            a.describe("absent")


def test_unreachable_broker_is_reported_quickly():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrokerError) as ei:
        Consumer(f"tcp://127.0.0.1:{port}", "x", connect_timeout_ms=300)
    assert ei.value.code == ErrorCode.REQUEST_TIMED_OUT
    p = Producer(f"tcp://127.0.0.1:{port}", connect_timeout_ms=300)
    with pytest.raises(BrokerError):
        p.send("x", b"y")
    p.close(1)
