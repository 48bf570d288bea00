"""Record headers end to end: the codec (hpbroker.batch.encode_headers /
decode_headers), the Producer's send(headers=) and send_batch(headers=),
``hpbroker produce --header`` and the raw example, read back from a real
broker with a raw Fetch (tests/rawclient.py), not through the Consumer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerproc import BrokerProcess
from hpbroker import Producer, batch
from hpbroker.client.accumulator import Accumulator
from hpbroker.client.split import encode_requests
from rawclient import RawClient

ROOT = Path(__file__).resolve().parent.parent
E, H = batch.ENTRY_SIZE, batch.HEADER_SIZE

names = st.text(min_size=1, max_size=20)  # hypothesis' text() never holds a lone surrogate
header_lists = st.lists(st.tuples(names, st.binary(max_size=40)), max_size=6)


# -- the codec -------------------------------------------------------------------------------


@given(header_lists)
def test_encode_decode_round_trip(pairs):
    blob = batch.encode_headers(pairs)
    if not pairs:
        assert blob is None
    else:
        assert isinstance(blob, bytes) and len(blob) > 0
    assert batch.decode_headers(blob) == pairs


@given(st.lists(st.tuples(st.binary(max_size=10), st.one_of(st.none(), header_lists)), min_size=1, max_size=20))
@settings(max_examples=50)
def test_headers_survive_a_batch_that_passes_check_batch(records):
    values = [v for v, _ in records]
    blobs = [batch.encode_headers(h) for _, h in records]
    b = batch.encode_batch(values, headers=blobs)
    batch.check_batch(b, 0, len(b))
    got = batch.records_of(b)
    assert [r.value for r in got] == values
    assert [batch.decode_headers(r.headers) for r in got] == [h or [] for _, h in records]


def test_the_documented_example_bytes():
    """docs/protocol.md "Record headers" and batch.py's docstring show these bytes."""
    assert batch.encode_headers([("trace", b"\x01\x02")]).hex(" ") == "91 92 a5 74 72 61 63 65 c4 02 01 02"


def test_bytes_like_values_and_order_and_repeated_names():
    pairs = [("b", bytearray(b"1")), ("a", memoryview(b"22")), ("b", b""), ("ünï", b"\xff")]
    want = [("b", b"1"), ("a", b"22"), ("b", b""), ("ünï", b"\xff")]
    assert batch.decode_headers(batch.encode_headers(pairs)) == want
    assert batch.encode_headers(None) is None and batch.encode_headers([]) is None and batch.encode_headers(()) is None
    assert batch.decode_headers(None) == [] and batch.decode_headers(b"") == []


@pytest.mark.parametrize("pairs, error, words", [
    ({"a": b"1"}, TypeError, "list of (name, value) pairs"),
    ("a=1", TypeError, "list of (name, value) pairs"),
    ([("a", b"1", b"2")], TypeError, "header 0 must be a (name, value) pair"),
    ([("a", b"1"), "b"], TypeError, "header 1 must be a (name, value) pair"),
    ([(b"a", b"1")], TypeError, "name must be str, got bytes"),
    ([(None, b"1")], TypeError, "name must be str"),
    ([("", b"1")], ValueError, "name must not be empty"),
    ([("bad\ud800", b"1")], ValueError, "not valid UTF-8"),
    ([("a", "text")], TypeError, "header 'a': value must be bytes, got str"),
    ([("a", None)], TypeError, "value must be bytes, got NoneType"),
    ([("a", 7)], TypeError, "value must be bytes, got int"),
])
def test_bad_headers_are_refused_with_a_clear_message(pairs, error, words):
    with pytest.raises(error) as ei:
        batch.encode_headers(pairs)
    assert words in str(ei.value)


_enc = msgspec.msgpack.encode


@pytest.mark.parametrize("blob", [
    _enc([("a", b"1")])[:-1],                # truncated
    _enc([("a", b"1")]) + b"\x00",           # trailing bytes
    _enc([("a", "str, not bin")]),           # value is a str
    _enc([("a", b"1", b"2")]),               # a triple
    _enc({"a": b"1"}),                       # a map
    _enc([(1, b"1")]),                       # name not a str
    _enc([("", b"1")]),                      # empty name
    bytes([0x91, 0x92, 0xa1, 0xff, 0xc4, 0x00]),  # name not UTF-8
    b"\xc1",                                 # not msgpack
])
def test_decoding_malformed_headers_raises_corrupt_batch(blob):
    with pytest.raises(batch.CorruptBatch) as ei:
        batch.decode_headers(blob)
    assert "record headers" in str(ei.value)


# -- the producer's data path, without a broker ----------------------------------------------


def test_the_accumulator_keeps_headers_with_their_message_and_counts_them():
    blob = batch.encode_headers([("h", b"x" * 10)])
    limit = H + 3 * (10 + E) + len(blob)
    acc = Accumulator(lambda: limit, 1.0, on_open=lambda: None, on_full=lambda: None, wall_ms=lambda: 5000)
    acc.append("t", 0, b"a" * 10, None, None, 10 + E)
    f = acc.append_with_headers("t", 0, b"b" * 10, b"k", None, 10 + E + 1 + len(blob), blob)
    assert ("t", 0) in acc.open and acc.open["t", 0].headers == [(1, blob)]
    # this one fills the batch exactly: the batch it sealed has it
    blob2 = batch.encode_headers([("z", b"")])
    acc2 = Accumulator(lambda: H + (10 + E) + len(blob2), 1.0, on_open=lambda: None, on_full=lambda: None,
                       wall_ms=lambda: 5000)
    f2 = acc2.append_with_headers("t", 1, b"c" * 10, None, None, 10 + E + len(blob2), blob2)
    assert not acc2.open and acc2.sealed[-1].acc.headers == [(0, blob2)] and f2._index == 0
    sealed = acc2.sealed[-1]
    assert sealed.nbytes == 10 + E + len(blob2)
    sealed.encode()
    (frame,) = sealed.frames
    batch.check_batch(frame, 0, len(frame))
    assert len(frame) == H + sealed.nbytes
    assert [batch.decode_headers(r.headers) for r in batch.records_of(frame)] == [[("z", b"")]]
    assert f._index == 1


def test_send_batch_split_counts_header_bytes_towards_max_batch():
    values = [b"v" * 20] * 12
    hdrs = [batch.encode_headers([("n", b"%02d" % i)]) if i % 3 else None for i in range(12)]
    max_batch = H + 3 * (20 + E) + 2 * len(hdrs[1])
    reqs = encode_requests(values, None, None, max_batch, 1 << 20, headers=hdrs)
    frames = [f for r in reqs for f in r]
    assert len(frames) > 3 and all(len(f) <= max_batch for f in frames)
    got = [r for f in frames for r in batch.records_of(f)]
    assert [r.headers for r in got] == hdrs


# -- against a real broker --------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("headers") / "data", args=("--partitions", "4"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def raw(broker):
    c = RawClient(broker.url)
    try:
        yield c
    finally:
        c.close()


def test_send_with_headers_round_trips_through_the_broker(broker, raw):
    sent = []
    with Producer(broker.url, acks="all", linger_ms=5) as p:
        for i in range(300):
            hdrs = [("i", b"%d" % i), ("kind", b"odd" if i % 2 else b"even")] if i % 3 else None
            key = b"k%d" % i if i % 5 == 0 else None
            p.send("hdr", b"value-%d" % i, key=key, partition=i % 2, headers=hdrs)
            sent.append((i % 2, b"value-%d" % i, key, hdrs or []))
        p.send("hdr", b"empty-list", partition=0, headers=[])
        sent.append((0, b"empty-list", None, []))
        p.flush(60)
    got = {}
    for part in (0, 1):
        for r in raw.fetch_all("hdr", part):  # check_batch on every batch
            got[r.value] = (part, r.value, r.key, batch.decode_headers(r.headers))
            if r.value == b"empty-list":
                assert r.headers is None  # headers_length 0, not an empty array
    assert sorted(got.values(), key=repr) == sorted(sent, key=repr)


def test_send_batch_with_per_record_headers(broker, raw):
    shared = [("source", b"bulk")]
    values = [b"b%d" % i for i in range(500)]
    headers = [shared if i % 2 else ([("only", b"%d" % i)] if i % 7 == 0 else None) for i in range(500)]
    with Producer(broker.url, acks=1) as p:
        md = p.send_batch("hdrb", values, partition=3, headers=headers).result(60)
        assert md.offset == 0
        p.send_batch("hdrb", [b"x", b"y"], partition=3, headers=[None, None]).result(60)
    got = raw.fetch_all("hdrb", 3)
    assert [r.value for r in got] == values + [b"x", b"y"]
    assert [batch.decode_headers(r.headers) for r in got] == [h or [] for h in headers] + [[], []]
    assert got[-1].headers is None


def test_bad_headers_raise_in_the_callers_thread_and_hold_nothing(broker):
    with Producer(broker.url, linger_ms=10_000) as p:
        with pytest.raises(TypeError, match="value must be bytes"):
            p.send("hdrbad", b"v", headers=[("a", "not bytes")])
        with pytest.raises(ValueError, match="name must not be empty"):
            p.send("hdrbad", b"v", headers=[("", b"x")])
        with pytest.raises(TypeError, match="record 1: header 0: name must be str"):
            p.send_batch("hdrbad", [b"a", b"b"], headers=[None, [(b"n", b"v")]])
        with pytest.raises(ValueError, match="2 values"):
            p.send_batch("hdrbad", [b"a", b"b"], headers=[None])
        with pytest.raises(TypeError, match="one list of"):
            p.send_batch("hdrbad", [b"a", b"b"], headers="nope")
        assert p._memory.used == 0 and p._memory.batches == 0 and not p._accum.open


def test_header_bytes_count_in_buffer_memory(broker):
    blob = batch.encode_headers([("name", b"x" * 100)])
    with Producer(broker.url, linger_ms=60_000) as p:
        p.partitions_for("hdrmem")
        p.send("hdrmem", b"v" * 10, partition=0, headers=[("name", b"x" * 100)])
        assert p._memory.used == 10 + E + len(blob)
        p.send("hdrmem", b"w" * 10, key=b"kk", partition=0)
        assert p._memory.used == 10 + E + len(blob) + 10 + E + 2
        f = p.send_batch("hdrmem", [b"a", b"b"], partition=1, headers=[[("name", b"x" * 100)], None])
        f.result(60)
        p.flush(60)
        assert p._memory.used == 0


def _hpb(*args, input: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "hpbroker", *args], input=input, capture_output=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_produce_cli_header_flags(broker, raw):
    r = _hpb("produce", "hdrcli", "--broker", broker.url, "--partition", "2", "--header", "app=cli",
             "--header", "eq=a=b", "--header", "empty=", "--header", "app=again", "--header", b"bin=\xfe\xff",
             input=b"one\ntwo\n")
    assert r.returncode == 0, r.stderr
    got = raw.fetch_all("hdrcli", 2)
    assert [r.value for r in got] == [b"one", b"two"]
    # the value is the bytes argv held, UTF-8 or not
    want = [("app", b"cli"), ("eq", b"a=b"), ("empty", b""), ("app", b"again"), ("bin", b"\xfe\xff")]
    assert [batch.decode_headers(r.headers) for r in got] == [want, want]
    r = _hpb("produce", "hdrcli", "--broker", broker.url, "--key-separator", ":", "--header", "h=1",
             input=b"k:v\n")
    assert r.returncode == 0, r.stderr
    found = [rec for part in range(4) for rec in raw.fetch_all("hdrcli", part) if rec.value == b"v"]
    assert [(rec.key, batch.decode_headers(rec.headers)) for rec in found] == [(b"k", [("h", b"1")])]


@pytest.mark.parametrize("flag, words", [
    ("noequals", b"expected NAME=VALUE"),
    ("=value", b"the header name is empty"),
    (b"\xff=value", b"not valid UTF-8"),
])
def test_produce_cli_malformed_header_is_one_line_and_exit_2(flag, words):
    # refused before any broker is asked: the port is not listening
    r = _hpb("produce", "t", "--broker", "tcp://127.0.0.1:1", "--connect-timeout-ms", "200", "--header", flag,
             input=b"x\n")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count(b"\n") == 1 and words in r.stderr and b"--header" in r.stderr, r.stderr


def test_raw_producer_example_writes_headers(broker, raw):
    lines = [b"raw %d" % i for i in range(1500)]
    r = subprocess.run([sys.executable, ROOT / "examples" / "raw_producer.py", broker.url, "hdrraw"],
                       input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = [rec for part in range(4) for rec in raw.fetch_all("hdrraw", part)]
    assert sorted((rec.value, tuple(batch.decode_headers(rec.headers))) for rec in got) == \
        sorted((v, (("line", b"%d" % i),)) for i, v in enumerate(lines))


def test_the_broker_refuses_headers_a_consumer_could_not_read(broker):
    from rawclient import RawClient
    from hpbroker.protocol import messages as m

    c = RawClient(broker.url)
    bad = batch.encode_batch([b"x", b"y"], headers=[None, b"\xc1junk"])
    rep, _ = c.call(m.Produce(id=c.next_id(), topic="hdrcheck", partition=0), [bad])
    assert rep.code == 3 and "record 1" in rep.message  # CORRUPT_BATCH, naming the record
    good = batch.encode_batch([b"x"], headers=[batch.encode_headers([("a", b"1")])])
    rep, _ = c.call(m.Produce(id=c.next_id(), topic="hdrcheck", partition=0), [good])
    assert rep.code == 0 and rep.base_offsets == [0]  # nothing of the refused batch was written
