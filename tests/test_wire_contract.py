"""docs/protocol.md against a real broker: the places where a client written
from the document alone found the broker disagreeing.

Absence of a reply is shown with a probe, never with a sleep: the acceptor
handles one socket's requests in order, answers a refusal while it handles
the request, and answers a long poll while it handles the group commit that
woke it; ZeroMQ keeps one connection's replies in order.  So a reply the
broker sent before it answered the probe arrives before the probe's reply
(`replies_before`), and each test shows the probe catching a reply that
was sent (its control case) before it shows one that was not.

The consumer-group messages are also checked without a broker, through the
codec alone, and the document against the code (the error table, the
message types it names).
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import msgspec
import pytest
import zmq

from brokerproc import BrokerProcess
from hpbroker import Producer, batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import RETRIABLE, ErrorCode, ProtocolError
from rawclient import RawClient


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One standalone broker for the module's tests (4 partitions, topics
    auto-created), as tests/conftest.py's but started once: each test uses
    topics of its own, and none restarts or stops it."""
    b = BrokerProcess(tmp_path_factory.mktemp("wire-contract") / "data", args=("--partitions", "4"))
    b.start()
    try:
        yield b
    finally:
        b.stop()

MiB = 1 << 20
OFFSETS = "__consumer_offsets"
enc, dec = msgspec.msgpack.encode, msgspec.msgpack.decode


def send(c: RawClient, req, payloads=()) -> int:
    c.send_frames(codec.encode_request(req, payloads))
    return req.id


def send_raw(c: RawClient, head: dict, payloads=()) -> None:
    c.send_frames([enc(head), *payloads])


def replies_before(c: RawClient, probe=None):
    """Send ``probe`` (a Metadata by default) on ``c``'s socket and return
    (every reply that came back before the probe's, the probe's reply)."""
    probe = probe or m.Metadata(id=c.next_id(), topics=[])
    send(c, probe)
    before = []
    while True:
        rep, frames = c.recv(timeout_ms=30_000)
        if rep.id == probe.id and type(rep) is m.REPLY_FOR[type(probe)]:
            return before, rep
        before.append((rep, frames))


def latest_probe(c: RawClient, topic: str, partition: int):
    """A ListOffsets(latest) probe: its reply also says how far the acceptor
    knew the partition to be committed when it answered."""
    return replies_before(c, m.ListOffsets(id=c.next_id(), topic=topic, partition=partition, spec=m.LATEST))


def raw_frames(c: RawClient, timeout_ms: int = 30_000) -> list[bytes]:
    """One reply exactly as the broker sent it (RawClient.recv would add a
    FetchReply's missing payload frame)."""
    assert c.sock.poll(timeout_ms), "no reply from the broker"
    return c.sock.recv_multipart()


def one_batch(value_len: int, fill: bytes = b"x") -> bytearray:
    return batch.encode_batch([fill * value_len])


def values_in(payload: bytes) -> list[tuple[int, bytes]]:
    out = []
    for pos, _ in batch.iter_batches(payload):
        out += [(r.offset, r.value) for r in batch.records_of(payload, pos)]
    return out


# -- section 8: size limits ----------------------------------------------------------


def test_limits_are_the_4_mib_defaults_and_over_limit_requests_get_message_too_large(broker):
    c = RawClient(broker.url)
    md, _ = c.call(m.Metadata(id=c.next_id(), topics=["big"]))
    assert (md.max_batch_bytes, md.max_request_bytes) == (4 * MiB, 4 * MiB)
    # what the document used to promise: an 8 MiB batch, a 16 MiB request
    rep = c.produce("big", 0, [one_batch(5 * MiB)])
    assert rep.code == ErrorCode.MESSAGE_TOO_LARGE and str(4 * MiB) in rep.message
    rep = c.produce("big", 0, [one_batch(3 * MiB), one_batch(3 * MiB)])
    assert rep.code == ErrorCode.MESSAGE_TOO_LARGE and "request" in rep.message
    rep, _ = c.call(m.ProduceMessages(id=c.next_id(), topic="big", partition=0), [b"v" * (5 * MiB)])
    assert rep.code == ErrorCode.MESSAGE_TOO_LARGE
    # one batch of exactly the limit is fine, and nothing refused was written
    rep = c.produce("big", 0, [one_batch(4 * MiB - batch.HEADER_SIZE - batch.ENTRY_SIZE)])
    assert rep.code == 0 and rep.base_offsets == [0]
    assert len(c.fetch_all("big", 0)) == 1
    c.close()


# -- section 3, Fetch: min_bytes ------------------------------------------------------


def test_min_bytes_holds_a_long_poll_until_that_much_is_there(broker):
    prod, cons = RawClient(broker.url), RawClient(broker.url)
    assert prod.produce("mb", 0, [one_batch(20)]).base_offsets == [0]

    # control: a long poll with the default min_bytes is answered by the
    # first batch, and the probe sees that reply
    p1 = send(cons, m.Fetch(id=cons.next_id(), topic="mb", partition=0, offset=1, max_wait_ms=60_000))
    assert latest_probe(cons, "mb", 0)[0] == []  # parked: nothing past offset 1
    small = one_batch(20, b"s")
    assert len(small) == 100
    assert prod.produce("mb", 0, [small]).base_offsets == [1]
    before, latest = latest_probe(cons, "mb", 0)
    assert latest.offset == 2
    assert [(r.id, values_in(bytes(f[0]))) for r, f in before] == [(p1, [(1, b"s" * 20)])]

    # the case: at the high watermark, min_bytes 4096
    p2 = send(cons, m.Fetch(id=cons.next_id(), topic="mb", partition=0, offset=2, min_bytes=4096, max_wait_ms=60_000))
    assert prod.produce("mb", 0, [one_batch(20, b"t")]).base_offsets == [2]  # 100 bytes: not enough
    before, latest = latest_probe(cons, "mb", 0)
    assert latest.offset == 3 and before == []  # the acceptor had the batch and held the fetch
    assert prod.produce("mb", 0, [one_batch(1000, b"u")]).base_offsets == [3]  # 1180 in all: still not enough
    before, latest = latest_probe(cons, "mb", 0)
    assert latest.offset == 4 and before == []
    assert prod.produce("mb", 0, [one_batch(3000, b"v")]).base_offsets == [4]  # 4260 bytes: enough
    rep, frames = cons.recv()
    assert rep.id == p2 and rep.code == 0 and rep.high_watermark == 5
    data = bytes(frames[0])
    assert len(data) >= 4096
    assert values_in(data) == [(2, b"t" * 20), (3, b"u" * 1000), (4, b"v" * 3000)]
    prod.close(), cons.close()


def test_min_bytes_not_reached_is_answered_at_max_wait_with_what_there_is(broker):
    prod, cons = RawClient(broker.url), RawClient(broker.url)
    assert prod.produce("mbw", 0, [one_batch(20, b"a")]).base_offsets == [0]
    sent = time.monotonic()
    # not at the high watermark: 100 bytes are there from offset 0, fewer than min_bytes
    p = send(cons, m.Fetch(id=cons.next_id(), topic="mbw", partition=0, offset=0, min_bytes=4096, max_wait_ms=1500))
    assert latest_probe(cons, "mbw", 0)[0] == []
    assert prod.produce("mbw", 0, [one_batch(20, b"b")]).base_offsets == [1]
    before, latest = latest_probe(cons, "mbw", 0)
    assert latest.offset == 2 and before == []
    rep, frames = cons.recv()
    assert time.monotonic() - sent >= 1.5  # answered by the deadline, not by the data
    assert rep.id == p and rep.code == 0 and rep.high_watermark == 2
    assert values_in(bytes(frames[0])) == [(0, b"a" * 20), (1, b"b" * 20)]
    prod.close(), cons.close()


def test_a_long_poll_stops_at_max_bytes_below_min_bytes(broker):
    prod, cons = RawClient(broker.url), RawClient(broker.url)
    a, b = one_batch(1120, b"a"), one_batch(1120, b"b")
    assert len(a) == len(b) == 1200
    cons.call(m.Metadata(id=cons.next_id(), topics=["mbx"]))  # creates it: a fetch never does
    p = send(cons, m.Fetch(id=cons.next_id(), topic="mbx", partition=0, offset=0, max_bytes=2000,
                           min_bytes=1 << 20, max_wait_ms=60_000))
    assert prod.produce("mbx", 0, [a]).base_offsets == [0]
    before, latest = latest_probe(cons, "mbx", 0)
    assert latest.offset == 1 and before == []
    # the second batch does not fit what is left of max_bytes: the poll is
    # full, answered with the first, and the second is the next fetch's
    assert prod.produce("mbx", 0, [b]).base_offsets == [1]
    rep, frames = cons.recv()
    assert rep.id == p and rep.high_watermark == 2
    assert values_in(bytes(frames[0])) == [(0, b"a" * 1120)]
    prod.close(), cons.close()


def test_min_bytes_zero_answers_at_once(broker):
    c = RawClient(broker.url)
    assert c.produce("mb0", 0, [one_batch(20)]).code == 0
    p = send(c, m.Fetch(id=c.next_id(), topic="mb0", partition=0, offset=1, min_bytes=0, max_wait_ms=60_000))
    before, _ = replies_before(c)
    assert [(r.id, r.code, r.high_watermark, bytes(f[0])) for r, f in before] == [(p, 0, 1, b"")]
    c.close()


# -- section 7: acks=0 ---------------------------------------------------------------


def _bad_produce_requests(acks: int) -> dict[str, tuple[list, int]]:
    good = bytes(batch.encode_batch([b"fine"]))
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF
    head = lambda **kw: enc({"t": "Produce", "id": 0, "topic": "ack0", "partition": 0, "acks": acks, **kw})
    return {
        "no payload frame": ([head()], ErrorCode.BAD_REQUEST),
        "odd key/value frames": ([enc({"t": "ProduceMessages", "id": 0, "topic": "ack0", "acks": acks, "keys": True}),
                                  b"k", b"v", b"k2"], ErrorCode.BAD_REQUEST),
        "invalid header field": ([head(topic=".."), good], ErrorCode.BAD_REQUEST),
        "invalid timeout": ([head(timeout_ms=-5), good], ErrorCode.BAD_REQUEST),
        "corrupt batch": ([head(), bytes(corrupt)], ErrorCode.CORRUPT_BATCH),
        "two batches in a frame": ([head(), good + good], ErrorCode.CORRUPT_BATCH),
        "compressed batch": ([head(), bytes(batch.encode_batch([b"z"], attributes=1))], ErrorCode.UNSUPPORTED_COMPRESSION),
        "no such partition": ([head(partition=99), good], ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    }


def test_acks_0_gets_no_reply_even_for_errors(broker):
    c = RawClient(broker.url)
    # control: with acks=1 every one of them is answered, and the probe sees it
    for name, (frames, code) in _bad_produce_requests(1).items():
        c.send_frames(frames)
        before, _ = replies_before(c)
        assert [(type(r), r.code) for r, _ in before] == [(m.ProduceReply, code)], name
        assert before[0][0].message, name
    for name, (frames, code) in _bad_produce_requests(0).items():
        c.send_frames(frames)
        before, _ = replies_before(c)
        assert before == [], name
    # what still answers an acks=0 request: a header that is no msgpack map
    # (acks unknown), and one of another protocol version
    c.send_frames([b"\xc1 not msgpack", b"x"])
    before, _ = replies_before(c)
    assert [(type(r), r.code) for r, _ in before] == [(m.ErrorReply, ErrorCode.BAD_REQUEST)]
    send_raw(c, {"t": "Produce", "v": 2, "id": 7, "topic": "ack0", "partition": 0, "acks": 0}, [b"x"])
    before, _ = replies_before(c)
    assert [(type(r), r.id, r.code) for r, _ in before] == [(m.ErrorReply, 7, ErrorCode.UNSUPPORTED_VERSION)]
    send_raw(c, {"t": "Produce", "id": 8, "topic": "ack0", "partition": 0, "acks": False}, [b"x"])
    before, _ = replies_before(c)
    assert [(type(r), r.id, r.code) for r, _ in before] == [(m.ProduceReply, 8, ErrorCode.BAD_REQUEST)]
    # refused, not lost: the broker logged the drops, nothing was written, and a good acks=0 request is
    assert "dropped 1 acks=0 produce request without a reply" in broker.log()
    assert c.fetch_all("ack0", 0) == []
    send(c, m.Produce(id=c.next_id(), topic="ack0", partition=0, acks=0), [batch.encode_batch([b"kept"])])
    deadline = time.monotonic() + 30
    while latest_probe(c, "ack0", 0)[1].offset < 1:
        assert time.monotonic() < deadline, "the acks=0 batch was never written"
        c.sock.poll(20)  # let the writer's group commit land before asking again
    assert [r.value for r in c.fetch_all("ack0", 0)] == [b"kept"]
    c.close()


# -- sections 3 and 4: every reply to a Fetch has its payload frame -------------------


def test_every_reply_to_a_fetch_is_header_and_one_payload_frame(broker):
    c = RawClient(broker.url)
    assert c.produce("fr", 0, [batch.encode_batch([b"one"])]).code == 0
    fetch = {"t": "Fetch", "id": 5, "topic": "fr", "partition": 0, "offset": 0}
    cases = [
        (fetch, [], 0),
        ({**fetch, "offset": 99}, [], ErrorCode.OFFSET_OUT_OF_RANGE),
        ({**fetch, "partition": 9}, [], ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        ({**fetch, "topic": "nosuchtopic"}, [], ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        ({**fetch, "offset": -1}, [], ErrorCode.BAD_REQUEST),  # fails header validation
        ({k: v for k, v in fetch.items() if k != "offset"}, [], ErrorCode.BAD_REQUEST),
        (fetch, [b"stray"], ErrorCode.BAD_REQUEST),
    ]
    for head, payloads, code in cases:
        send_raw(c, head, payloads)
        head_frame, payload = raw_frames(c)  # the consume example of section 9
        rep = dec(head_frame)
        assert (rep["t"], rep["id"], rep["code"]) == ("FetchReply", 5, code), (head, rep)
        if code:
            assert payload == b"" and rep["message"]
        else:
            assert values_in(payload) == [(0, b"one")]
    # only a header the broker cannot read as a version-1 Fetch gets the bare ErrorReply
    send_raw(c, {**fetch, "v": 2})
    frames = raw_frames(c)
    assert len(frames) == 1 and dec(frames[0])["t"] == "ErrorReply"
    c.close()


# -- section 5: frames, compression bits, reserved bytes ------------------------------


def _with_crc(b: bytearray) -> bytes:
    struct.pack_into("<I", b, batch.CRC_AT, batch.compute_crc(b))
    return bytes(b)


def test_batch_fields_a_producer_must_leave_alone_are_checked(broker):
    c = RawClient(broker.url)
    c.call(m.Metadata(id=c.next_id(), topics=["fields"]))  # creates it
    good = batch.encode_batch([b"v1", b"v2"], [b"k", None])

    def patched(at: int, value: int) -> bytes:
        b = bytearray(good)
        b[at] = value
        return _with_crc(b)

    cases = {
        "compression codec 1": (bytes(batch.encode_batch([b"x"], attributes=1)), ErrorCode.UNSUPPORTED_COMPRESSION),
        "compression codec 4": (bytes(batch.encode_batch([b"x"], attributes=4)), ErrorCode.UNSUPPORTED_COMPRESSION),
        "attributes bit 3": (bytes(batch.encode_batch([b"x"], attributes=8)), ErrorCode.CORRUPT_BATCH),
        "reserved byte 17 (outside the CRC)": (patched(17, 1), ErrorCode.CORRUPT_BATCH),
        "reserved byte 27": (patched(27, 0x80), ErrorCode.CORRUPT_BATCH),
        "reserved byte 63": (patched(63, 1), ErrorCode.CORRUPT_BATCH),
        "frame of two batches": (bytes(good) + bytes(good), ErrorCode.CORRUPT_BATCH),
        "batch plus a trailing byte": (bytes(good) + b"\0", ErrorCode.CORRUPT_BATCH),
        "empty frame": (b"", ErrorCode.CORRUPT_BATCH),
        "frame shorter than the batch": (bytes(good[:-1]), ErrorCode.CORRUPT_BATCH),
    }
    for name, (frame, code) in cases.items():
        rep = c.produce("fields", 0, [good, frame])
        assert rep.code == code and rep.message, (name, rep)
    assert c.fetch_all("fields", 0) == []  # no part of a refused request was written
    # what the Python client sends is never refused: keys, timestamps, batches, both produce paths
    with Producer(broker.url, acks=1) as p:
        futs = [p.send("fields", b"v%d" % i, key=b"k" if i % 2 else None, partition=0,
                       timestamp_ms=1_700_000_000_000 + i) for i in range(50)]
        futs.append(p.send_batch("fields", [b"b%d" % i for i in range(500)], partition=0,
                                 keys=[b"k%d" % i if i % 2 else None for i in range(500)]))
        for f in futs:
            f.result(30)
    assert c.produce("fields", 0, [good]).code == 0
    rep, _ = c.call(m.ProduceMessages(id=c.next_id(), topic="fields", partition=0, keys=True), [b"k", b"v"])
    assert rep.code == 0
    assert len(c.fetch_all("fields", 0)) == 50 + 500 + 2 + 1
    c.close()


# -- section 3: auto-creation, and which acceptor --------------------------------------


def test_produce_auto_creates_an_unknown_topic_and_fetch_does_not(broker):
    c = RawClient(broker.url)
    rep = c.produce("born", 0, [batch.encode_batch([b"x"])])
    assert rep.code == 0 and rep.base_offsets == [0]
    md, _ = c.call(m.Metadata(id=c.next_id(), topics=["born"]))
    assert len(md.topics[0].partitions) == 4  # broker.default_partitions (--partitions 4)
    rep, _ = c.call(m.ProduceMessages(id=c.next_id(), topic="born2"), [b"y"])
    assert rep.code == 0 and 0 <= rep.partition < 4
    # a partition the new topic does not have: created, then refused
    rep = c.produce("born3", 7, [batch.encode_batch([b"x"])])
    assert rep.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert [t.name for t in c.call(m.Metadata(id=c.next_id()))[0].topics if t.name == "born3"] == ["born3"]
    # reads never create
    for req in (m.Fetch(id=c.next_id(), topic="unborn", partition=0, offset=0),
                m.ListOffsets(id=c.next_id(), topic="unborn", partition=0, spec=m.LATEST)):
        assert c.call(req)[0].code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert "unborn" not in [t.name for t in c.call(m.Metadata(id=c.next_id()))[0].topics]
    c.close()


def test_without_auto_creation_produce_to_an_unknown_topic_is_refused(tmp_path):
    cfg = tmp_path / "noauto.toml"
    cfg.write_text("[broker]\nauto_create_topics = false\n")
    b = BrokerProcess(tmp_path / "data", args=("--config", str(cfg))).start()
    try:
        c = RawClient(b.url)
        rep = c.produce("nope", 0, [batch.encode_batch([b"x"])])
        assert rep.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and "auto_create_topics" in rep.message
        md, _ = c.call(m.Metadata(id=c.next_id(), topics=["nope"]))
        assert md.topics[0].code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        c.close()
    finally:
        assert b.stop() == 0


def test_any_acceptor_serves_any_partition(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--acceptors", "2", "--partitions", "2")).start()
    try:
        boot = RawClient(b.url)
        md, _ = boot.call(m.Metadata(id=boot.next_id(), topics=["wa"]))
        assert len(md.acceptors) == 2 and md.acceptors[0] == b.url
        a0, a1 = RawClient(md.acceptors[0]), RawClient(md.acceptors[1])
        # partition 1 belongs to acceptor 1; acceptor 0 takes it all the same
        p = send(a1, m.Fetch(id=a1.next_id(), topic="wa", partition=1, offset=0, max_wait_ms=60_000))
        assert a0.produce("wa", 1, [batch.encode_batch([b"via 0"])]).base_offsets == [0]
        rep, frames = a1.recv()  # the long poll on the other acceptor wakes too
        assert rep.id == p and values_in(bytes(frames[0])) == [(0, b"via 0")]
        assert a1.produce("wa", 1, [batch.encode_batch([b"via 1"])]).base_offsets == [1]
        for c in (a0, a1):
            assert [r.value for r in c.fetch_all("wa", 1)] == [b"via 0", b"via 1"]
            assert c.call(m.ListOffsets(id=c.next_id(), topic="wa", partition=1, spec=m.LATEST))[0].offset == 2
        for c in (boot, a0, a1):
            c.close()
    finally:
        assert b.stop() == 0


# -- section 1: reply order --------------------------------------------------------------


def test_produce_replies_of_one_partition_come_in_order_and_a_long_poll_is_overtaken(broker):
    c = RawClient(broker.url)
    c.call(m.Metadata(id=c.next_id(), topics=["order"]))  # creates it
    poll = send(c, m.Fetch(id=c.next_id(), topic="order", partition=0, offset=0, max_wait_ms=60_000))
    ids = [send(c, m.Produce(id=c.next_id(), topic="order", partition=0), [batch.encode_batch([b"%d" % i])])
           for i in range(30)]
    got = [c.recv() for _ in range(31)]
    produce_replies = [(r.id, r.base_offsets) for r, _ in got if isinstance(r, m.ProduceReply)]
    assert produce_replies == [(i, [n]) for n, i in enumerate(ids)]
    # the long poll, sent first, is answered when the first batch is committed:
    # after that batch's own ack, never before it
    order = [r.id for r, _ in got]
    assert order.index(poll) > order.index(ids[0])
    c.close()


# -- section 3, consumer groups: the messages through the codec (no broker) -------------

GROUP_REQUESTS = [
    m.FindCoordinator(id=101, group="orders"),
    m.GroupHeartbeat(id=102, group="orders.v2_x-1", member_id="5f0c" * 8, member_epoch=m.JOIN),
    m.GroupHeartbeat(id=103, group="orders", member_id="a" * 64, member_epoch=7, instance_id="host-1#3",
                     client_host="10.0.0.7", topics=["t", "s.x"], assignor="range", session_timeout_ms=3000,
                     rebalance_timeout_ms=60_000,
                     owned=[m.TopicPartitions("s.x", [0]), m.TopicPartitions("t", [1, 3, 5])]),
    m.GroupHeartbeat(id=104, group="orders", member_id="m1", member_epoch=m.LEAVE),
    m.OffsetCommit(id=105, group="orders", member_id="m1", member_epoch=7,
                   offsets=[m.OffsetEntry("t", 1, 42, "meta"), m.OffsetEntry("t", 3, 0)], validate_only=True,
                   timeout_ms=5000),
    m.OffsetCommit(id=106, group="orders"),  # an admin commit: no member, epoch -1, nothing to commit
    m.OffsetFetch(id=107, group="orders"),
    m.OffsetFetch(id=108, group="orders", partitions=[m.TopicPartitions("t", [0, 2])]),
    m.ListGroups(id=109),
    m.DescribeGroup(id=110, group="orders"),
]

GROUP_REPLIES = [
    m.FindCoordinatorReply(id=101, acceptor=1, endpoint="tcp://127.0.0.1:7601"),
    m.GroupHeartbeatReply(id=102, member_id="m1", member_epoch=9, heartbeat_interval_ms=500,
                          assignment=[m.TopicPartitions("t", [0, 1])]),
    m.GroupHeartbeatReply(id=104, member_id="m1", member_epoch=m.LEAVE),
    m.GroupHeartbeatReply(id=103, code=ErrorCode.FENCED_MEMBER_EPOCH, message="member epoch 8 is newer than the 7"),
    m.OffsetCommitReply(id=105),
    m.OffsetCommitReply(id=106, code=ErrorCode.NON_EMPTY_GROUP, message="2 live members"),
    m.OffsetFetchReply(id=107, offsets=[m.OffsetEntry("t", 0, 10, "", 1_700_000_000_000),
                                        m.OffsetEntry("t", 2, 0, "x", 1_700_000_000_001)]),
    m.ListGroupsReply(id=109, groups=[m.GroupListing("orders", "reconciling", 2), m.GroupListing("old", "empty", 0)]),
    m.DescribeGroupReply(
        id=110, group="orders", state="stable", group_epoch=12, assignor="sticky",
        members=[m.MemberDescription("m1", "host-1", "10.0.0.7", 12, ["t"], [m.TopicPartitions("t", [0, 1])],
                                     [m.TopicPartitions("t", [1])], 250)],
        partitions=[m.PartitionLag("t", 0, 10, 15, 5, "m1"), m.PartitionLag("t", 1, -1, 7, 7)]),
    m.DescribeGroupReply(id=111, code=ErrorCode.GROUP_ID_NOT_FOUND, message="no group 'x'"),
]


def test_every_group_message_is_covered_here():
    group_requests = set(m.REQUEST_TYPES[m.REQUEST_TYPES.index(m.FindCoordinator):m.REQUEST_TYPES.index(m.DescribeGroup) + 1])
    assert {type(r) for r in GROUP_REQUESTS} == group_requests
    assert {type(r) for r in GROUP_REPLIES} == {m.REPLY_FOR[t] for t in group_requests}


@pytest.mark.parametrize("req", GROUP_REQUESTS, ids=lambda r: f"{type(r).__name__}-{r.id}")
def test_group_requests_round_trip(req):
    frames = codec.encode_request(req)
    assert len(frames) == 1  # no payload frames
    back, payloads = codec.decode_request(frames)
    assert back == req and type(back) is type(req) and payloads == []
    head = dec(frames[0])
    assert head["t"] == type(req).__name__ and head["id"] == req.id and head["v"] == 1
    # a payload frame is refused, in the request's own reply type
    with pytest.raises(ProtocolError) as e:
        codec.decode_request([frames[0], b"stray"])
    assert e.value.code == ErrorCode.BAD_REQUEST
    assert type(codec.protocol_error_reply(e.value)) is m.REPLY_FOR[type(req)]


@pytest.mark.parametrize("rep", GROUP_REPLIES, ids=lambda r: f"{type(r).__name__}-{r.id}")
def test_group_replies_round_trip(rep):
    frames = codec.encode_reply(rep)
    assert len(frames) == 1
    back, payloads = codec.decode_reply(frames)
    assert back == rep and type(back) is type(rep) and payloads == []


def test_group_fields_on_the_wire_are_the_documented_maps():
    """The nested shapes section 3 shows: maps without a "t" key, and what a
    sender may leave out."""
    head = dec(codec.encode_request(GROUP_REQUESTS[2])[0])
    assert head["owned"] == [{"topic": "s.x", "partitions": [0]}, {"topic": "t", "partitions": [1, 3, 5]}]
    head = dec(codec.encode_request(GROUP_REQUESTS[4])[0])
    assert head["offsets"][0] == {"topic": "t", "partition": 1, "offset": 42, "metadata": "meta",
                                  "commit_timestamp": -1}
    # a minimal hand-written header decodes with the documented defaults
    req, _ = codec.decode_request([enc({"t": "GroupHeartbeat", "id": 5, "group": "g", "member_id": "m",
                                        "owned": [{"topic": "t", "partitions": [2]}]})])
    assert (req.member_epoch, req.topics, req.assignor, req.session_timeout_ms, req.rebalance_timeout_ms) == \
        (m.JOIN, [], "", 10_000, 300_000)
    assert req.owned == [m.TopicPartitions("t", [2])]
    req, _ = codec.decode_request([enc({"t": "OffsetCommit", "id": 6, "group": "g",
                                        "offsets": [{"topic": "t", "partition": 0, "offset": 3}]})])
    assert (req.member_id, req.member_epoch, req.validate_only, req.timeout_ms) == ("", -1, False, 30_000)
    assert req.offsets == [m.OffsetEntry("t", 0, 3, "", -1)]
    req, _ = codec.decode_request([enc({"t": "OffsetFetch", "id": 7, "group": "g", "partitions": None})])
    assert req.partitions is None


BAD_GROUP_IDS = ["", "a b", "a/b", "grp@host", "g:1", "é", "x" * 250]


@pytest.mark.parametrize("kind", ["FindCoordinator", "GroupHeartbeat", "OffsetCommit", "OffsetFetch", "DescribeGroup"])
@pytest.mark.parametrize("group", BAD_GROUP_IDS, ids=repr)
def test_a_bad_group_id_is_bad_request_in_the_requests_own_reply_type(kind, group):
    head = {"t": kind, "id": 77, "group": group}
    if kind == "GroupHeartbeat":
        head["member_id"] = "m1"
    with pytest.raises(ProtocolError) as e:
        codec.decode_request([enc(head)])
    err = e.value
    assert err.code == ErrorCode.BAD_REQUEST and err.id == 77 and err.kind == kind
    assert codec.wants_reply(err)
    frames = codec.protocol_error_frames(err)
    rep, payloads = codec.decode_reply(frames)
    assert type(rep) is m.REPLY_FOR[getattr(m, kind)] and rep.id == 77
    assert rep.code == ErrorCode.BAD_REQUEST and "group" in rep.message and payloads == []
    # the longest and the most varied good ids pass
    for good in ("x" * 249, "A-z_0.9"):
        codec.decode_request([enc({**head, "group": good})])


def test_other_group_fields_are_checked_at_decoding():
    base = {"t": "GroupHeartbeat", "id": 8, "group": "g", "member_id": "m1"}
    for bad in ({"member_id": "x" * 65}, {"member_epoch": -2}, {"session_timeout_ms": 0}, {"rebalance_timeout_ms": 0},
                {"topics": [".."]}, {"assignor": "x" * 33}, {"owned": [{"topic": "t"}]}, {"owned": [["t", [0]]]}):
        with pytest.raises(ProtocolError) as e:
            codec.decode_request([enc({**base, **bad})])
        assert e.value.code == ErrorCode.BAD_REQUEST and e.value.kind == "GroupHeartbeat", bad
        assert type(codec.protocol_error_reply(e.value)) is m.GroupHeartbeatReply
    with pytest.raises(ProtocolError) as e:
        codec.decode_request([enc({"t": "OffsetCommit", "id": 9, "group": "g", "member_epoch": -2})])
    assert type(codec.protocol_error_reply(e.value)) is m.OffsetCommitReply


# -- docs/protocol.md names what the code has -------------------------------------------


def _protocol_md() -> str:
    return (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_the_error_table_lists_every_code_with_its_retriability():
    text = _protocol_md()
    section = text[text.index("## 6. Error codes"):text.index("## 7.")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows[int(cells[0])] = (cells[1], cells[2])
    assert set(rows) == {int(c) for c in ErrorCode}
    for code in ErrorCode:
        name, retriable = rows[int(code)]
        assert name == code.name
        if code != ErrorCode.OK:
            assert retriable == ("yes" if code in RETRIABLE else "no"), code.name


def test_the_document_names_every_message_type():
    text = _protocol_md()
    for t in (*m.REQUEST_TYPES, *m.REPLY_TYPES):
        assert f"`{t.__name__}`" in text or f"### {t.__name__}" in text, t.__name__
    section4 = text[text.index("## 4. Replies and errors"):text.index("## 5.")]
    for t in m.REPLY_TYPES:
        assert f"`{t.__name__}`" in section4, f"section 4's list of reply types lacks {t.__name__}"


# -- section 3, consumer groups, against a broker: routing, commits, the record format ---


def test_group_routing_commits_and_the_offsets_record_format(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--acceptors", "2", "--partitions", "2")).start()
    try:
        boot = RawClient(b.url)
        md, _ = boot.call(m.Metadata(id=boot.next_id(), topics=["gt"]))
        clients = [RawClient(url) for url in md.acceptors]
        assert clients[0].produce("gt", 0, [batch.encode_batch([b"a", b"b", b"c"])]).base_offsets == [0]
        # one group per acceptor at least, to see both answers
        assert boot.call(m.FindCoordinator(id=boot.next_id(), group="grp-0"))[0].code == 0  # creates the topic
        n = len(boot.call(m.Metadata(id=boot.next_id(), topics=[OFFSETS]))[0].topics[0].partitions)
        assert n == 8  # groups.offsets_partitions
        groups = {}
        for i in range(40):
            group = f"grp-{i}"
            rep, _ = boot.call(m.FindCoordinator(id=boot.next_id(), group=group))
            assert rep.code == 0
            p = zlib.crc32(group.encode()) % n
            assert rep.acceptor == p % 2 and rep.endpoint == md.acceptors[rep.acceptor]
            groups.setdefault(rep.acceptor, (group, p))
        assert set(groups) == {0, 1}
        for acceptor, (group, p) in groups.items():
            mine, other = clients[acceptor], clients[1 - acceptor]
            join = m.GroupHeartbeat(id=other.next_id(), group=group, member_id="m-1", topics=["gt"])
            rep, _ = other.call(join)
            assert type(rep) is m.GroupHeartbeatReply and rep.code == ErrorCode.NOT_COORDINATOR
            assert md.acceptors[acceptor] in rep.message
            rep, _ = mine.call(join)
            assert rep.code == 0 and rep.member_epoch > 0
            assert [(tp.topic, tp.partitions) for tp in rep.assignment] == [("gt", [0, 1])]
            rep, _ = mine.call(m.OffsetCommit(id=mine.next_id(), group=group, member_id="m-1",
                                              member_epoch=rep.member_epoch,
                                              offsets=[m.OffsetEntry("gt", 0, 2, "note")]))
            assert type(rep) is m.OffsetCommitReply and rep.code == 0, rep
            rep, _ = mine.call(m.OffsetFetch(id=mine.next_id(), group=group))
            assert [(e.topic, e.partition, e.offset, e.metadata) for e in rep.offsets] == [("gt", 0, 2, "note")]
            assert rep.offsets[0].commit_timestamp > 1_600_000_000_000
            # the record, as section 3 describes it, in partition crc32(group) % 8
            (rec,) = mine.fetch_all(OFFSETS, p)
            assert msgspec.msgpack.decode(rec.key) == [group, "gt", 0]
            value = msgspec.msgpack.decode(rec.value)
            assert {k: value[k] for k in "ome"} == {"o": 2, "m": "note", "e": 1}
            assert value["t"] == rep.offsets[0].commit_timestamp
            # the other acceptor refuses the read too; a commit while the member lives is fenced for an admin
            assert other.call(m.OffsetFetch(id=other.next_id(), group=group))[0].code == ErrorCode.NOT_COORDINATOR
            rep, _ = mine.call(m.OffsetCommit(id=mine.next_id(), group=group, offsets=[m.OffsetEntry("gt", 0, 0)]))
            assert rep.code == ErrorCode.NON_EMPTY_GROUP
            rep, _ = mine.call(m.OffsetCommit(id=mine.next_id(), group=group, member_id="m-1", member_epoch=1,
                                              offsets=[m.OffsetEntry("gt", 0, 99)]))
            assert rep.code == ErrorCode.OFFSET_OUT_OF_RANGE  # beyond the high watermark (3)
            listed = mine.call(m.ListGroups(id=mine.next_id()))[0].groups
            assert m.GroupListing(group, "stable", 1) in listed
            assert group not in [g.group for g in other.call(m.ListGroups(id=other.next_id()))[0].groups]
        # offsets are written by OffsetCommit only
        rep = boot.produce(OFFSETS, 0, [batch.encode_batch([b"x"])])
        assert rep.code == ErrorCode.BAD_REQUEST and OFFSETS in rep.message
        for c in (boot, *clients):
            c.close()
    finally:
        assert b.stop() == 0


def test_init_producer_id_round_trips():
    req = m.InitProducerId(id=5)
    back, payloads = codec.decode_request(codec.encode_request(req))
    assert back == req and payloads == []
    rep = m.InitProducerIdReply(id=5, producer_id=123456789)
    back, _ = codec.decode_reply(codec.encode_reply(rep))
    assert back == rep
