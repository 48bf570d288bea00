"""Server-side filters against a real broker process (tests/brokerproc.py):
exactly the matching records with their offsets, a fully filtered range
that moves on, a long poll that is not answered by writes it filters out,
bad filters refused while the broker serves on, and old clients unaffected."""

from __future__ import annotations

import random
import time

import msgspec
import pytest

from hpbroker import Consumer, Filter, Producer, batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.protocol.filters import MAX_FILTER_BYTES
from rawclient import RawClient
from test_wire_contract import raw_frames, replies_before, send

enc, dec = msgspec.msgpack.encode, msgspec.msgpack.decode
RARE = Filter.header_in("tag", ["rare"])


def produce_tagged(url: str, topic: str, n_batches: int, per_batch: int, seed: int = 1):
    """Batches of records tagged "rare" (about 1 %) or "common", some with a
    "vip-" key; returns every record as (offset, key, value, tag)."""
    rnd = random.Random(seed)
    out = []
    c = RawClient(url)
    for j in range(n_batches):
        tags = [b"rare" if rnd.random() < 0.01 else b"common" for _ in range(per_batch)]
        keys = [b"vip-%d" % i if rnd.random() < 0.01 else (None if i % 7 == 0 else b"k%d" % i) for i in range(per_batch)]
        values = [b"v-%d-%d-" % (j, i) + b"x" * 80 for i in range(per_batch)]
        b = batch.encode_batch(values, keys, headers=[batch.encode_headers([("tag", t), ("n", b"%d" % i)])
                                                       for i, t in enumerate(tags)])
        rep = c.produce(topic, 0, [b])
        assert rep.code == 0, rep
        base = rep.base_offsets[0]
        out += [(base + i, keys[i], values[i], tags[i]) for i in range(per_batch)]
    return out


def filtered_fetch(c: RawClient, topic: str, offset: int, flt, **kw):
    req = m.Fetch(id=c.next_id(), topic=topic, partition=0, offset=offset, filter=msgspec.Raw(enc(flt)), **kw)
    rep, frames = c.call(req)
    return rep, bytes(frames[0])


def records(payload: bytes):
    out = []
    for pos, h in batch.iter_batches(payload):
        batch.check_batch(payload, pos, h.batch_length)  # every reply batch is a valid batch
        out += batch.records_of(payload, pos)
    return out


def test_a_1_percent_filter_returns_exactly_the_matching_records_with_their_offsets(broker):
    sent = produce_tagged(broker.url, "tags", 40, 500)
    rare = [(o, k, v) for o, k, v, t in sent if t == b"rare"]
    vip = [(o, k, v) for o, k, v, t in sent if k is not None and k.startswith(b"vip-")]
    assert 100 < len(rare) < 300 and 100 < len(vip) < 300
    c = RawClient(broker.url)
    hwm = sent[-1][0] + 1
    for spec, want in ((RARE.spec, rare), ({"key": {"prefix": "vip-"}}, vip),
                       ({"and": [RARE.spec, {"key": {"prefix": "vip-"}}]}, [r for r in rare if r in vip])):
        off, got, wire = 0, [], 0
        while off < hwm:
            rep, payload = filtered_fetch(c, "tags", off, spec, max_bytes=64 << 10)
            assert rep.code == 0 and rep.high_watermark == hwm and rep.next_offset > off
            wire += len(payload)
            got += [(r.offset, r.key, r.value) for r in records(payload)]
            off = rep.next_offset
        assert got == want
        assert wire < 0.05 * sum(len(v) for _, _, v, _ in sent)  # the rest never crossed the network
    # the same through the Consumer: poll() and poll_batches()
    with Consumer(broker.url, "tags", partitions=[0], auto_offset_reset="earliest", filter=RARE,
                  fetch_max_wait_ms=100) as cons:
        got = []
        for _ in range(100):
            got += cons.poll(timeout_ms=200, max_records=10_000)
            if cons.position(0) == hwm:
                break
        assert [(x.offset, x.key, x.value) for x in got] == rare
        assert all(dict(x.headers)["tag"] == b"rare" for x in got)
        assert cons.position(0) == hwm
    with Consumer(broker.url, "tags", partitions=[0], auto_offset_reset="earliest",
                  filter={"key": {"prefix": "vip-"}}, fetch_max_wait_ms=100) as cons:
        got = []
        for _ in range(100):
            for rb in cons.poll_batches(timeout_ms=200):
                got += [(r.offset, r.key, r.value) for r in records(bytes(rb.data))]
            if cons.position(0) == hwm:
                break
        assert got == vip


def test_a_fully_filtered_range_moves_the_consumer_on(broker):
    with Producer(broker.url) as p:
        for _ in range(10):
            p.send_batch("quiet", [b"x" * 100] * 1000, partition=0, headers=[[("tag", b"common")]] * 1000)
        p.flush(30)
    c = RawClient(broker.url)
    rep, payload = filtered_fetch(c, "quiet", 0, RARE.spec)
    assert rep.code == 0 and payload == b"" and rep.next_offset == rep.high_watermark == 10_000
    with Consumer(broker.url, "quiet", partitions=[0], auto_offset_reset="earliest", filter=RARE,
                  fetch_max_wait_ms=100) as cons:
        deadline = time.monotonic() + 30
        while cons.position(0) < 10_000 and time.monotonic() < deadline:
            assert cons.poll(timeout_ms=100) == []
        assert cons.position(0) == 10_000


def test_a_filtered_long_poll_is_not_answered_by_writes_it_filters_out(broker):
    c = RawClient(broker.url)
    common = batch.encode_batch([b"c"] * 10, headers=[batch.encode_headers([("tag", b"common")])] * 10)
    assert c.produce("poll", 0, [common]).code == 0
    fid = send(c, m.Fetch(id=c.next_id(), topic="poll", partition=0, offset=10, max_wait_ms=30_000,
                          filter=msgspec.Raw(RARE.encode())))
    for _ in range(3):  # each produce's commit wakes the parked fetch, which reads it and waits on
        rep = c.produce("poll", 0, [common])  # its reply comes first: the fetch was not answered before it
        assert rep.code == 0
    before, _ = replies_before(c)  # nor while the broker handled those commits
    assert before == []
    rare = batch.encode_batch([b"r"], headers=[batch.encode_headers([("tag", b"rare")])])
    send(c, m.Produce(id=c.next_id(), topic="poll", partition=0), [rare])
    got = {}
    while len(got) < 2:
        rep, frames = c.recv(timeout_ms=10_000)
        got[type(rep)] = (rep, frames)
    rep, frames = got[m.FetchReply]
    assert rep.id == fid and rep.code == 0 and rep.next_offset == 41
    assert [(r.offset, r.value) for r in records(bytes(frames[0]))] == [(40, b"r")]


def test_a_filtered_long_poll_that_times_out_says_where_to_go_on(broker):
    c = RawClient(broker.url)
    common = batch.encode_batch([b"c"] * 10, headers=[batch.encode_headers([("tag", b"common")])] * 10)
    assert c.produce("poll2", 0, [common]).code == 0
    t0 = time.monotonic()
    rep, payload = filtered_fetch(c, "poll2", 0, RARE.spec, max_wait_ms=300)
    assert time.monotonic() - t0 >= 0.25  # it waited: no reply with nothing, at once, forever
    assert rep.code == 0 and payload == b"" and rep.next_offset == 10


BAD = [
    ({"header": "tag", "in": []}, "filter.in: a non-empty list of values"),
    ({"header": "tag", "regex": "(a+)+$"}, "unknown test 'regex'"),
    ("tag == 'a'", "a filter is a map, got a string"),
    ({"header": "t", "in": ["x" * 200] * 30}, f"more than {MAX_FILTER_BYTES}"),
    ({"or": [{"key": {"exists": True}}] * 80}, "more than 64 terms"),
    (b"\x00" * 10, "a filter is a map, got bytes"),
]


@pytest.mark.parametrize("flt,says", BAD, ids=[s for _, s in BAD])
def test_a_bad_filter_is_bad_request_and_the_broker_serves_on(broker, flt, says):
    c = RawClient(broker.url)
    assert c.produce("bad", 0, [batch.encode_batch([b"a", b"b"])]).code == 0
    send(c, m.Fetch(id=77, topic="bad", partition=0, offset=0, filter=msgspec.Raw(enc(flt))))
    frames = raw_frames(c)
    assert len(frames) == 2 and frames[1] == b""  # a FetchReply and its one, empty, payload frame
    rep = dec(frames[0])
    assert rep["t"] == "FetchReply" and rep["id"] == 77 and rep["code"] == ErrorCode.BAD_REQUEST
    assert rep["message"].startswith("bad filter: ") and says in rep["message"]
    # the same filter on a topic that does not exist: still the filter's error, first
    rep, _ = filtered_fetch(c, "no-such-topic", 0, flt)
    assert rep.code == ErrorCode.BAD_REQUEST
    rep, payload = c.fetch("bad", 0, 0)  # and the broker serves on
    assert rep.code == 0 and [r.value for r in records(payload)] == [b"a", b"b"]
    with pytest.raises(ValueError):
        Consumer(broker.url, "bad", filter=flt)  # the client refuses it before sending


def test_an_old_client_without_the_field_gets_the_same_bytes_as_before(broker):
    with Producer(broker.url) as p:
        for j in range(5):
            p.send_batch("old", [b"%d-%d" % (j, i) for i in range(100)], partition=0,
                         headers=[[("tag", b"rare" if i == 3 else b"common")] for i in range(100)])
        p.flush(30)
    c = RawClient(broker.url)
    head = {"t": "Fetch", "id": 5, "topic": "old", "partition": 0, "offset": 150}  # no "v", no "filter"
    c.send_frames([enc(head)])
    frames = raw_frames(c)
    rep = dec(frames[0])
    assert rep["code"] == 0 and rep["high_watermark"] == 500
    payload = frames[1]
    assert [h.base_offset for _, h in batch.iter_batches(payload)] == [100, 200, 300, 400]  # whole batches, as ever
    # byte for byte what a fetch with "filter": null gets, and what the log holds
    c.send_frames([enc({**head, "id": 6, "filter": None})])
    assert raw_frames(c)[1] == payload
    assert set(rep) - {"t", "v", "id", "code", "message", "high_watermark", "log_start_offset"} == {"next_offset"}
    assert rep["next_offset"] == 500
    with Consumer(broker.url, "old", partitions=[0], auto_offset_reset="earliest") as cons:
        got = []
        while len(got) < 500:
            got += cons.poll(timeout_ms=1000, max_records=1000)
        assert [x.offset for x in got] == list(range(500))


def test_unfiltered_and_filtered_consumers_share_a_partition(broker):
    produce_tagged(broker.url, "mixed", 4, 200, seed=3)
    fid = 1000
    c = RawClient(broker.url)
    # pipelined: an unfiltered and a filtered fetch of the same partition, both answered right
    send(c, m.Fetch(id=fid, topic="mixed", partition=0, offset=0))
    send(c, m.Fetch(id=fid + 1, topic="mixed", partition=0, offset=0, filter=msgspec.Raw(RARE.encode())))
    reps = {}
    for _ in range(2):
        rep, frames = codec.decode_reply(raw_frames(c))
        reps[rep.id] = (rep, bytes(frames[0]))
    assert len(records(reps[fid][1])) == 800
    assert all(dict(batch.decode_headers(r.headers))["tag"] == b"rare" for r in records(reps[fid + 1][1]))
    assert reps[fid][0].next_offset == reps[fid + 1][0].next_offset == 800


def test_hpbroker_consume_filter(broker):
    from test_console import hpb

    for tag, lines in ((b"a", b"a1\na2\n"), (b"b", b"b1\nb2\nb3\n"), (b"a", b"a3\n")):
        r = hpb("produce", "cli-f", "--partition", "0", "--header", "tag=" + tag.decode(), input=lines, url=broker.url)
        assert r.returncode == 0, r.stderr
    r = hpb("consume", "cli-f", "--from-beginning", "--partition", "0", "--timeout-ms", "1500",
            "--filter", '{"header": "tag", "in": ["a"]}', url=broker.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"a1\na2\na3\n"
    r = hpb("consume", "cli-f", "--filter", '{"header": "tag", "in": []}', url=broker.url)
    assert r.returncode == 2 and b"--filter: filter.in: a non-empty list of values" in r.stderr
    r = hpb("consume", "cli-f", "--filter", "tag=a", url=broker.url)
    assert r.returncode == 2 and b"--filter:" in r.stderr
