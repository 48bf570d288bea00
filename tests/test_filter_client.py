"""The consumer's fetcher with a filter, without a broker: it moves on with
``next_offset``, moves the position past dropped records only once the
reply's records are handed out, and filters by itself a reply from a
broker older than filters (no ``next_offset``)."""

from __future__ import annotations

import pytest

from hpbroker import Consumer, Filter, FilterError, batch
from hpbroker.client.fetcher import Fetcher, Part
from hpbroker.protocol.filters import select
from hpbroker.protocol.messages import FetchReply


class FakeTransport:
    request_timeout_ms = 1000
    several = False

    def __init__(self):
        self.sent = []
        self._id = 0

    def next_id(self):
        self._id += 1
        return self._id

    def endpoint_for(self, partition):
        return "ep"

    def send(self, ep, req, on_reply, timeout_ms):
        self.sent.append(req)

    def forget(self, rid):
        pass


RARE = Filter.header_eq("tag", "rare")


def tagged(base: int, tags: list[str]) -> bytes:
    b = batch.encode_batch([b"v%d" % (base + i) for i in range(len(tags))],
                           headers=[batch.encode_headers([("tag", t.encode())]) for t in tags])
    batch.stamp(b, base, 1)
    return bytes(b)


def fetcher(flt=RARE):
    f = Fetcher(FakeTransport(), max_wait_ms=100, max_bytes=1 << 20, min_bytes=1, reset_needed=lambda p: None,
                decode_headers=batch.decode_headers, filter=flt)
    part = f.parts[("t", 0)] = Part("t", 0)
    f.move(part, 0)
    return f, part


def reply(f, part, payload: bytes, next_offset: int):
    f.fetch_all(0)
    req = f.t.sent[-1]
    assert req.offset == part.fetch_offset
    f._on_fetch(part, req.id, FetchReply(id=req.id, high_watermark=1000, log_start_offset=0, next_offset=next_offset),
                [memoryview(payload)])
    return req


def test_the_filter_goes_with_every_fetch():
    f, part = fetcher()
    req = reply(f, part, b"", 0)
    assert Filter.decode(bytes(req.filter)) == RARE
    f2, part2 = fetcher(None)
    f2.fetch_all(0)
    assert f2.t.sent[-1].filter.__class__.__name__ == "UnsetType"


def test_an_empty_reply_moves_fetch_offset_and_position_on():
    f, part = fetcher()
    reply(f, part, b"", 500)
    assert part.fetch_offset == 500 and part.position == 500
    assert reply(f, part, b"", 900).offset == 500
    assert part.position == 900


def test_the_position_passes_dropped_records_only_once_the_reply_is_handed_out():
    f, part = fetcher()
    full = tagged(0, ["common", "rare", "common", "rare"] + ["common"] * 6)
    pieces, _, nxt, _ = select(full, RARE, 0, 1 << 20)
    reply(f, part, b"".join(pieces), nxt)
    assert part.fetch_offset == 10
    out = []
    f.take_messages(part, 1, out)
    assert [m.offset for m in out] == [1] and part.position == 2  # one of two handed out: no jump yet
    f.take_messages(part, 10, out)
    assert [m.offset for m in out] == [1, 3] and part.position == 10
    # an empty reply while a decoded record is still waiting: the jump waits for it
    reply(f, part, b"".join(select(tagged(10, ["rare", "rare"]), RARE, 10, 1 << 20)[0]), 12)
    f.take_messages(part, 1, out)
    reply(f, part, b"", 40)
    assert part.position == 11 and part.decoded  # offset 11 not handed out yet: no jump to 40
    f.take_messages(part, 10, out)
    assert [m.offset for m in out][-2:] == [10, 11] and part.position == 40


def test_take_raw_moves_past_dropped_records_too():
    f, part = fetcher()
    pieces, _, nxt, _ = select(tagged(0, ["common", "rare", "common"]), RARE, 0, 1 << 20)
    reply(f, part, b"".join(pieces), nxt)
    rb = f.take_raw(part, 1 << 20)
    assert (rb.record_count, rb.base_offset) == (1, 1) and part.position == 3


def test_a_reply_from_a_broker_without_filters_is_filtered_here():
    f, part = fetcher()
    everything = tagged(0, ["common", "rare", "common"]) + tagged(3, ["rare", "common"])
    reply(f, part, everything, -1)
    out = []
    f.take_messages(part, 100, out)
    assert [(m.offset, m.value) for m in out] == [(1, b"v1"), (3, b"v3")]
    assert part.position == 5 and part.fetch_offset == 5


def test_a_bad_filter_is_refused_before_any_socket_opens():
    with pytest.raises(FilterError, match="filter.in: a non-empty list"):
        Consumer("tcp://127.0.0.1:1", "t", filter={"header": "tag", "in": []})
    with pytest.raises(ValueError):
        Consumer("tcp://127.0.0.1:1", "t", filter="tag == 'a'")
