"""The wire protocol without sockets: round trips, bad input, fuzz."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hpbroker import batch
from hpbroker.protocol import (
    REPLY_FOR,
    BrokerError,
    CreateTopic,
    CreateTopicReply,
    ErrorCode,
    ErrorReply,
    Fetch,
    FetchReply,
    ListOffsets,
    ListOffsetsReply,
    Metadata,
    MetadataReply,
    PartitionMetadata,
    Produce,
    ProduceMessages,
    ProduceReply,
    ProtocolError,
    TopicMetadata,
    build_messages_batch,
    check_produce,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_frames,
    protocol_error_frames,
    protocol_error_reply,
    wants_reply,
)
from hpbroker.protocol.errors import RETRIABLE
from hpbroker.protocol.messages import REPLY_TYPES

REQUESTS = [
    (Metadata(id=1), []),
    (Metadata(id=2, topics=["logs", "a.b-c_d"]), []),
    (Produce(id=3, topic="logs", partition=2, acks=-1, timeout_ms=5), [bytes(batch.encode_batch([b"a", b"bc"]))]),
    (Produce(id=4, topic="logs", partition=0), [b"x" * 64, b"y" * 64]),
    (ProduceMessages(id=5, topic="logs"), [b"v1", b"", b"v3"]),
    (ProduceMessages(id=6, topic="logs", partition=1, acks=0, keys=True), [b"k", b"v"]),
    (Fetch(id=7, topic="logs", partition=3, offset=10, max_bytes=100, max_wait_ms=500, min_bytes=0), []),
    (ListOffsets(id=8, topic="logs", partition=0, spec=-2), []),
    (ListOffsets(id=9, topic="logs", partition=0, spec=1_700_000_000_000), []),
    (CreateTopic(id=10, topic="new", partitions=8, if_not_exists=True), []),
]

REPLIES = [
    (
        MetadataReply(
            id=1,
            cluster_id="c",
            broker_id=0,
            acceptors=["tcp://127.0.0.1:7600", "tcp://127.0.0.1:7601"],
            topics=[TopicMetadata("logs", [PartitionMetadata(0, 0, 3), PartitionMetadata(1, 0, 3)]), TopicMetadata("gone", [], 1)],
            max_batch_bytes=1 << 20,
            max_request_bytes=2 << 20,
        ),
        [],
    ),
    (ProduceReply(id=3, base_offsets=[0, 2], partition=2), []),
    (ProduceReply(id=4, code=ErrorCode.BUSY, message="ring full"), []),
    (FetchReply(id=7, high_watermark=12, log_start_offset=0), [bytes(batch.encode_batch([b"a"]))]),
    (ListOffsetsReply(id=8, offset=5), []),
    (CreateTopicReply(id=10, partitions=8), []),
    (ErrorReply(id=-1, code=ErrorCode.BAD_REQUEST, message="garbage"), []),
]


@pytest.mark.parametrize("req,payloads", REQUESTS, ids=lambda x: type(x).__name__)
def test_request_round_trip(req, payloads):
    frames = encode_request(req, payloads)
    assert isinstance(frames[0], bytes)
    got, got_payloads = decode_request(frames)
    assert got == req
    assert [bytes(p) for p in got_payloads] == payloads


@pytest.mark.parametrize("rep,payloads", REPLIES, ids=lambda x: type(x).__name__)
def test_reply_round_trip(rep, payloads):
    got, got_payloads = decode_reply(encode_reply(rep, payloads))
    assert got == rep
    if isinstance(rep, FetchReply):
        assert [bytes(p) for p in got_payloads] == payloads
    else:
        assert got_payloads == []


def test_header_is_a_plain_msgpack_map_tagged_with_t():
    frames = encode_request(Fetch(id=7, topic="logs", partition=1, offset=0))
    raw = msgspec.msgpack.decode(frames[0])
    assert raw == {
        "t": "Fetch",
        "v": 1,
        "id": 7,
        "topic": "logs",
        "partition": 1,
        "offset": 0,
        "max_bytes": 1 << 20,
        "max_wait_ms": 0,
        "min_bytes": 1,
    }


def test_a_raw_client_may_omit_defaulted_fields():
    head = msgspec.msgpack.encode({"t": "ProduceMessages", "id": 42, "topic": "logs"})
    req, payloads = decode_request([head, b"hello"])
    assert req == ProduceMessages(id=42, topic="logs", partition=-1, acks=1)
    assert bytes(payloads[0]) == b"hello"


def test_unknown_fields_are_ignored_for_forward_compatibility():
    head = msgspec.msgpack.encode({"t": "Metadata", "v": 1, "id": 1, "future_field": [1, 2]})
    assert decode_request([head])[0] == Metadata(id=1)


def test_frames_may_be_any_buffer_or_zmq_frames():
    zmq = pytest.importorskip("zmq")
    frames = encode_request(Produce(id=1, topic="t", partition=0), [b"abc"])
    mixed = [zmq.Frame(frames[0]), bytearray(b"abc")]
    req, payloads = decode_request(mixed)
    assert req.id == 1 and bytes(payloads[0]) == b"abc"
    req, payloads = decode_request([memoryview(frames[0]), zmq.Frame(b"abc")])
    assert bytes(payloads[0]) == b"abc"


def _code(frames) -> tuple[int, int]:
    with pytest.raises(ProtocolError) as ei:
        decode_request(frames)
    return ei.value.code, ei.value.id


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b""],
        [b"\xc1"],  # never-used msgpack byte
        [b"\x93\x01\x02\x03"],  # an array, not a map
        [b"not msgpack at all \xff\xfe"],
        [encode_request(Metadata(id=1))[0][:-3]],  # truncated
        [msgspec.msgpack.encode({"t": "Nope", "id": 1})],
        [msgspec.msgpack.encode({"id": 1, "topic": "x"})],  # no tag
        [msgspec.msgpack.encode({"t": "ProduceReply", "id": 1})],  # a reply is not a request
        [object()],
    ],
)
def test_garbage_headers_are_bad_request(frames):
    assert _code(frames)[0] == ErrorCode.BAD_REQUEST


def test_invalid_fields_keep_the_correlation_id():
    cases = [
        {"t": "Produce", "id": 9, "topic": "../etc", "partition": 0},
        {"t": "Produce", "id": 9, "topic": "..", "partition": 0},
        {"t": "Produce", "id": 9, "topic": "", "partition": 0},
        {"t": "Produce", "id": 9, "topic": "a", "partition": -1},
        {"t": "Produce", "id": 9, "topic": "a", "partition": 0, "acks": 2},
        {"t": "Fetch", "id": 9, "topic": "a", "partition": 0, "offset": -1},
        {"t": "Fetch", "id": 9, "topic": "a", "partition": 0},  # offset missing
        {"t": "ListOffsets", "id": 9, "topic": "a", "partition": 0, "spec": -3},
        {"t": "CreateTopic", "id": 9, "topic": "a", "partitions": 0},
        {"t": "Metadata", "id": 9, "topics": "logs"},
    ]
    for head in cases:
        frames = [msgspec.msgpack.encode(head)]
        if head["t"] == "Produce":
            frames.append(b"x")
        assert _code(frames) == (ErrorCode.BAD_REQUEST, 9), head


@pytest.mark.parametrize("v", [0, 2, 99, "1"])
def test_wrong_version_is_unsupported_version(v):
    good = {"t": "Fetch", "v": v, "id": 5, "topic": "a", "partition": 0, "offset": 0}
    assert _code([msgspec.msgpack.encode(good)]) == (ErrorCode.UNSUPPORTED_VERSION, 5)
    # a future version may also change the fields: still UNSUPPORTED_VERSION
    alien = {"t": "Fetch2", "v": v, "id": 6, "what": [1]}
    assert _code([msgspec.msgpack.encode(alien)]) == (ErrorCode.UNSUPPORTED_VERSION, 6)


def test_payload_frame_rules():
    head = encode_request(Produce(id=1, topic="a", partition=0))[0]
    assert _code([head]) == (ErrorCode.BAD_REQUEST, 1)
    head = encode_request(ProduceMessages(id=2, topic="a"))[0]
    assert _code([head]) == (ErrorCode.BAD_REQUEST, 2)
    head = encode_request(ProduceMessages(id=3, topic="a", keys=True))[0]
    assert _code([head, b"k", b"v", b"k2"]) == (ErrorCode.BAD_REQUEST, 3)
    head = encode_request(Fetch(id=4, topic="a", partition=0, offset=0))[0]
    assert _code([head, b"stray"]) == (ErrorCode.BAD_REQUEST, 4)


def test_fetch_reply_always_has_one_payload():
    frames = encode_reply(FetchReply(id=1, high_watermark=0, log_start_offset=0))
    assert len(frames) == 2 and frames[1] == b""
    _, payloads = decode_reply(frames[:1])
    assert len(payloads) == 1 and len(payloads[0]) == 0


def test_error_replies_use_the_requests_reply_type():
    for req, _ in REQUESTS:
        frames = error_frames(req, ErrorCode.BUSY, "later")
        rep, _ = decode_reply(frames)
        assert type(rep) is REPLY_FOR[type(req)]
        assert (rep.id, rep.code, rep.message) == (req.id, ErrorCode.BUSY, "later")
    try:
        decode_request([msgspec.msgpack.encode({"t": "Nope", "id": 77})])
    except ProtocolError as e:
        rep, _ = decode_reply(protocol_error_frames(e))
    assert isinstance(rep, ErrorReply) and rep.id == 77 and rep.code == ErrorCode.BAD_REQUEST


def test_error_codes_and_broker_error():
    assert ErrorCode.OK == 0 and ErrorCode.INTERNAL == 99 and ErrorCode.BROKER_SHUTTING_DOWN == 13
    assert RETRIABLE == {ErrorCode.BUSY, ErrorCode.NOT_LEADER, ErrorCode.REQUEST_TIMED_OUT, ErrorCode.NOT_ENOUGH_REPLICAS,
                         ErrorCode.BROKER_SHUTTING_DOWN, ErrorCode.NOT_COORDINATOR}
    e = BrokerError(2, "too big")
    assert e.code is ErrorCode.MESSAGE_TOO_LARGE and e.message == "too big" and not e.retriable
    assert "MESSAGE_TOO_LARGE" in str(e)
    assert BrokerError(6).retriable
    assert BrokerError(1234).code == 1234  # unknown codes survive


def test_check_produce_reports_size_and_corruption():
    good = batch.encode_batch([b"a" * 10, b"b"])
    req = Produce(id=1, topic="a", partition=0)
    (h,) = check_produce(req, [memoryview(good)], max_batch_bytes=1 << 20)
    assert h.record_count == 2
    with pytest.raises(ProtocolError) as ei:
        check_produce(req, [memoryview(good)], max_batch_bytes=len(good) - 1)
    assert ei.value.code == ErrorCode.MESSAGE_TOO_LARGE
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(ProtocolError) as ei:
        check_produce(req, [memoryview(good), memoryview(bad)], max_batch_bytes=1 << 20)
    assert ei.value.code == ErrorCode.CORRUPT_BATCH and ei.value.id == 1


def test_build_messages_batch():
    req = ProduceMessages(id=1, topic="a", keys=True)
    frames = [memoryview(x) for x in (b"k1", b"v1", b"", b"v2")]
    b = build_messages_batch(req, frames, max_batch_bytes=1 << 20)
    batch.check_batch(b, 0, len(b))
    recs = batch.records_of(b)
    assert [(r.key, r.value) for r in recs] == [(b"k1", b"v1"), (None, b"v2")]
    with pytest.raises(ProtocolError) as ei:
        build_messages_batch(req, frames, max_batch_bytes=64)
    assert ei.value.code == ErrorCode.MESSAGE_TOO_LARGE


_frame = st.one_of(
    st.binary(max_size=64),
    st.builds(
        msgspec.msgpack.encode,
        st.dictionaries(
            st.sampled_from(["t", "v", "id", "topic", "partition", "offset", "acks", "keys", "topics", "spec", "x"]),
            st.one_of(
                st.sampled_from(["Produce", "Fetch", "Metadata", "ProduceMessages", "ListOffsets", "CreateTopic", "logs", ".."]),
                st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
                st.booleans(),
                st.none(),
                st.lists(st.text(max_size=5), max_size=3),
                st.floats(allow_nan=True),
                st.binary(max_size=8),
            ),
        ),
    ),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_frame, max_size=4))
def test_fuzz_decode_request_raises_only_protocol_error(frames):
    try:
        req, payloads = decode_request(frames)
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode) and e.code != ErrorCode.OK
        assert isinstance(e.id, int)
    else:
        assert req.v == 1 and len(payloads) == len(frames) - 1


_reply_value = st.one_of(
    st.sampled_from(["ProduceReply", "FetchReply", "ListOffsetsReply", "StatsReply", "ErrorReply", "Produce", ""]),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-1, max_value=1 << 40), max_size=3),
    st.floats(allow_nan=True),
    st.binary(max_size=8),
)
_reply_keys = ["v", "code", "message", "base_offsets", "high_watermark", "offset", "stats", "x"]
_reply_frame = st.one_of(
    st.binary(max_size=64),
    st.builds(msgspec.msgpack.encode, st.dictionaries(st.sampled_from(["t", "id", *_reply_keys]), _reply_value)),
    st.builds(  # a reply's tag and id, and fields any of which may be wrong
        lambda t, i, rest: msgspec.msgpack.encode({"t": t, "id": i, **rest}),
        st.sampled_from(["ProduceReply", "FetchReply", "ListOffsetsReply", "StatsReply", "ErrorReply"]),
        st.integers(min_value=-1, max_value=1 << 40),
        st.dictionaries(st.sampled_from(_reply_keys), _reply_value, max_size=2),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_reply_frame, max_size=4) | st.lists(_reply_frame, min_size=1, max_size=1))  # one frame: often a reply
@example([msgspec.msgpack.encode({"t": "FetchReply", "id": 7})])  # decodes: given its empty payload
@example([msgspec.msgpack.encode({"t": "ProduceReply", "id": 7}), b"x"])  # a payload it cannot carry
def test_fuzz_decode_reply_raises_only_protocol_error(frames):
    try:
        rep, payloads = decode_reply(frames)
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode) and e.code != ErrorCode.OK
        assert isinstance(e.id, int)
    else:
        assert isinstance(rep, REPLY_TYPES) and rep.v == 1 and isinstance(rep.id, int)
        if isinstance(rep, FetchReply):  # always exactly one payload, empty when none came
            assert [bytes(p) for p in payloads] == ([bytes(frames[1])] if len(frames) == 2 else [b""])
        else:
            assert len(frames) == 1 and payloads == []


def _err(frames) -> ProtocolError:
    with pytest.raises(ProtocolError) as ei:
        decode_request(frames)
    return ei.value


def test_a_decoding_error_is_answered_with_the_reply_type_the_header_names():
    fetch = {"t": "Fetch", "id": 3, "topic": "a", "partition": 0, "offset": 0}
    for frames in ([msgspec.msgpack.encode({**fetch, "offset": -1})], [msgspec.msgpack.encode(fetch), b"stray"]):
        rep = protocol_error_reply(_err(frames))
        assert type(rep) is FetchReply and rep.id == 3 and rep.code == ErrorCode.BAD_REQUEST
        assert len(encode_reply(rep)) == 2  # header and the (empty) payload frame
    rep = protocol_error_reply(_err([msgspec.msgpack.encode({"t": "Produce", "id": 4, "topic": "a", "partition": 0})]))
    assert type(rep) is ProduceReply and rep.code == ErrorCode.BAD_REQUEST
    # no request type, or another version: the bare ErrorReply
    for head in (b"\xc1", msgspec.msgpack.encode({"t": "Nope", "id": 5}), msgspec.msgpack.encode({**fetch, "v": 2})):
        assert type(protocol_error_reply(_err([head]))) is ErrorReply


def test_acks_0_requests_and_their_decoding_errors_want_no_reply():
    prod = {"t": "Produce", "id": 1, "topic": "a", "partition": 0}
    assert not wants_reply(Produce(id=1, topic="a", partition=0, acks=0))
    assert not wants_reply(ProduceMessages(id=1, topic="a", acks=0))
    assert wants_reply(Produce(id=1, topic="a", partition=0)) and wants_reply(Fetch(id=1, topic="a", partition=0, offset=0))
    silent = [
        [msgspec.msgpack.encode({**prod, "acks": 0})],  # no payload frame
        [msgspec.msgpack.encode({"t": "ProduceMessages", "id": 1, "topic": "a", "acks": 0, "keys": True}), b"k"],
        [msgspec.msgpack.encode({**prod, "acks": 0, "topic": ".."}), b"x"],  # fails validation
        [msgspec.msgpack.encode({**prod, "acks": 0, "partition": "zero"}), b"x"],
    ]
    for frames in silent:
        assert not wants_reply(_err(frames)), frames
    answered = [
        [b"\xc1"],  # not msgpack: acks unknown
        [msgspec.msgpack.encode({**prod, "acks": 0, "v": 2}), b"x"],  # another version's acks
        [msgspec.msgpack.encode({**prod, "acks": False, "topic": ".."}), b"x"],  # acks is not the integer 0
        [msgspec.msgpack.encode({"t": "Fetch", "id": 1, "acks": 0})],  # acks means nothing to a Fetch
        [msgspec.msgpack.encode({**prod, "topic": ".."}), b"x"],
    ]
    for frames in answered:
        assert wants_reply(_err(frames)), frames


def test_check_produce_refuses_compression_and_reserved_fields():
    req = Produce(id=1, topic="a", partition=0)
    with pytest.raises(ProtocolError) as ei:
        check_produce(req, [memoryview(batch.encode_batch([b"a"], attributes=2))], max_batch_bytes=1 << 20)
    assert ei.value.code == ErrorCode.UNSUPPORTED_COMPRESSION and "codec 2" in ei.value.message
    for attributes in (8, 0x8000):
        with pytest.raises(ProtocolError) as ei:
            check_produce(req, [memoryview(batch.encode_batch([b"a"], attributes=attributes))], max_batch_bytes=1 << 20)
        assert ei.value.code == ErrorCode.CORRUPT_BATCH
    for at in (17, 18, 19, 26, 27, 60, 63):
        b = bytearray(batch.encode_batch([b"a"]))
        b[at] = 1
        b[batch.CRC_AT:batch.CRC_AT + 4] = batch.compute_crc(b).to_bytes(4, "little")
        with pytest.raises(ProtocolError) as ei:
            check_produce(req, [memoryview(b)], max_batch_bytes=1 << 20)
        assert ei.value.code == ErrorCode.CORRUPT_BATCH and "reserved" in ei.value.message, at
