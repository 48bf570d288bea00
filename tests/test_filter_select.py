"""What a filter matches, and the reply batches built from it, on hand-built
batches (no broker): every result is checked against a plain Python model
of docs/protocol.md's "Filters" section."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpbroker import Filter, batch
from hpbroker.protocol import filter_eval, filters

NAMES = ["tag", "t", "x-y"]
VALUES = [b"", b"a", b"ab", b"b", b"abc", b"\x00\xc4"]


# -- the model -----------------------------------------------------------------------------------


def _b(v) -> bytes:
    return v.encode() if isinstance(v, str) else v


def passes(op: str, arg, v: bytes) -> bool:
    if op == "eq":
        return v == _b(arg)
    if op == "in":
        return v in {_b(a) for a in arg}
    if op == "prefix":
        return v.startswith(_b(arg))
    return v.endswith(_b(arg))


def model(spec, key, pairs) -> bool:
    if "and" in spec:
        return all(model(s, key, pairs) for s in spec["and"])
    if "or" in spec:
        return any(model(s, key, pairs) for s in spec["or"])
    if "not" in spec:
        return not model(spec["not"], key, pairs)
    if "key" in spec:
        (op, arg), = spec["key"].items()
        if op == "exists":
            return (key is not None) == arg
        return key is not None and passes(op, arg, key)
    name = spec["header"]
    (op, arg), = ((k, v) for k, v in spec.items() if k != "header")
    if op == "exists":
        return any(n == name for n, _ in pairs) == arg
    return any(n == name and passes(op, arg, v) for n, v in pairs)


# -- strategies -------------------------------------------------------------------------------------

value = st.sampled_from(VALUES) | st.sampled_from(["a", "ab", ""])
test = st.one_of(
    st.tuples(st.sampled_from(["eq", "prefix", "suffix"]), value),
    st.tuples(st.just("in"), st.lists(value, min_size=1, max_size=4)),
    st.tuples(st.just("exists"), st.booleans()),
)
leaf = st.one_of(
    st.builds(lambda t: {"key": {t[0]: t[1]}}, test),
    st.builds(lambda n, t: {"header": n, t[0]: t[1]}, st.sampled_from(NAMES), test),
)
spec_st = st.recursive(leaf, lambda kids: st.one_of(
    st.builds(lambda k: {"and": k}, st.lists(kids, min_size=1, max_size=3)),
    st.builds(lambda k: {"or": k}, st.lists(kids, min_size=1, max_size=3)),
    st.builds(lambda k: {"not": k}, kids),
), max_leaves=6)

record = st.tuples(
    st.none() | st.sampled_from(VALUES),  # key
    st.binary(max_size=6),  # value
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=3),  # headers
    st.integers(min_value=0, max_value=1000),  # timestamp delta
)


def make(records, base: int, epoch: int = 3, seq: int = -1) -> bytes:
    keys = [r[0] for r in records]
    values = [r[1] for r in records]
    headers = [batch.encode_headers(r[2]) for r in records]
    ts = [1_700_000_000_000 + r[3] for r in records]
    b = batch.encode_batch(values, keys, timestamps_ms=ts, headers=headers, producer_id=42 if seq >= 0 else -1,
                           base_sequence=seq)
    batch.stamp(b, base, epoch)
    return bytes(b)


def log_of(batches_records, start: int = 0) -> tuple[bytes, list]:
    """Batches laid end to end from offset ``start``, and every record as
    (offset, key, value, headers, timestamp)."""
    data, flat, off = [], [], start
    for recs in batches_records:
        data.append(make(recs, off))
        for i, r in enumerate(recs):
            flat.append((off + i, r[0], r[1], r[2]))
        off += len(recs)
    return b"".join(data), flat


def decoded(data) -> list:
    """The records of reply batches, each batch checked as the broker checks a produced one."""
    out = []
    for pos, h in batch.iter_batches(data):
        batch.check_batch(data, pos, h.batch_length)
        for r in batch.records_of(data, pos):
            out.append((r.offset, r.key, r.value, batch.decode_headers(r.headers), r.timestamp))
    return out


def expected(flat, spec, min_offset=0) -> list:
    return [(o, k, v, list(h)) for o, k, v, h in flat if o >= min_offset and model(spec, k, h)]


def read_from(data: bytes, offset: int) -> bytes:
    """What the reader returns: whole batches from the one holding ``offset``."""
    for pos, h in batch.iter_batches(data):
        if h.base_offset + h.record_count > offset:
            return data[pos:]
    return b""


# -- properties ----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(spec_st, st.lists(st.lists(record, min_size=1, max_size=12), min_size=1, max_size=3), st.data())
def test_select_keeps_exactly_what_the_model_matches_with_offsets_and_timestamps(spec, recs, data):
    log, flat = log_of(recs, start=1000)
    f = Filter(spec)
    end = 1000 + len(flat)
    min_offset = data.draw(st.integers(min_value=1000, max_value=end))
    pieces, nbytes, nxt, stopped = filters.select(read_from(log, min_offset) or log[:0], f, min_offset, 1 << 30)
    reply = b"".join(pieces)
    assert nbytes == len(reply) and not stopped
    got = decoded(reply)
    assert [g[:4] for g in got] == expected(flat, spec, min_offset)
    stamps = {1000 + i: 1_700_000_000_000 + r[3] for i, r in enumerate(r for b in recs for r in b)}
    assert all(g[4] == stamps[g[0]] for g in got)  # every timestamp kept exactly
    assert nxt == (end if min_offset < end else -1)


@settings(max_examples=200, deadline=None)
@given(spec_st, st.lists(st.lists(record, min_size=1, max_size=12), min_size=1, max_size=4),
       st.integers(min_value=1, max_value=400))
def test_a_small_room_splits_the_reply_and_next_offset_loses_and_repeats_nothing(spec, recs, room):
    log, flat = log_of(recs)
    f = Filter(spec)
    off, got = 0, []
    while off < len(flat):
        pieces, nbytes, nxt, stopped = filters.select(read_from(log, off), f, off, room)
        assert nxt > off  # always progress, so a fully filtered range never stalls a consumer
        if stopped:
            assert nbytes <= room or len(pieces) == 1
        got += decoded(b"".join(pieces))
        off = nxt
    assert [g[:4] for g in got] == expected(flat, spec)


@settings(max_examples=200, deadline=None)
@given(spec_st, st.lists(record, min_size=1, max_size=40))
def test_the_mask_is_the_model_per_record(spec, recs):
    b = make(recs, 0)
    mask = Filter(spec).mask(b)
    assert mask.dtype == bool and mask.tolist() == [model(spec, r[0], r[2]) for r in recs]


# -- cases --------------------------------------------------------------------------------------------


def test_a_batch_every_record_of_which_matches_is_passed_on_as_the_same_bytes():
    b = make([(b"k", b"v", [("tag", b"a")], 0)] * 5, 10)
    pieces, *_ = filters.select(b, Filter.header_eq("tag", "a"), 0, 1 << 20)
    assert len(pieces) == 1 and bytes(pieces[0]) == b and isinstance(pieces[0], memoryview)


def test_runs_become_one_batch_each_with_base_sequence_and_max_timestamp_following():
    recs = [(b"k%d" % i, b"v%d" % i, [("tag", b"a" if i in (1, 2, 5) else b"b")], 10 * i) for i in range(7)]
    b = make(recs, 100, seq=1000)
    pieces, nbytes, nxt, _ = filters.select(b, Filter.header_eq("tag", "a"), 0, 1 << 20)
    hs = [batch.read_header(p) for p in pieces]
    assert [(h.base_offset, h.record_count) for h in hs] == [(101, 2), (105, 1)]
    assert [h.base_sequence for h in hs] == [1001, 1005]
    assert all(h.producer_id == 42 and h.leader_epoch == 3 for h in hs)
    first = batch.read_header(b).first_timestamp
    assert [h.first_timestamp for h in hs] == [first, first]
    assert [h.max_timestamp for h in hs] == [first + 20, first + 50]
    assert nxt == 107


def test_records_before_the_fetch_offset_are_never_sent():
    b = make([(None, b"%d" % i, [], 0) for i in range(10)], 0)
    pieces, _, nxt, _ = filters.select(b, Filter.key_exists(False), 4, 1 << 20)
    assert [r[0] for r in decoded(b"".join(pieces))] == [4, 5, 6, 7, 8, 9] and nxt == 10


def test_headers_that_are_not_the_documented_layout_count_as_none():
    b = bytes(batch.encode_batch([b"a", b"b", b"c"], headers=[b"\x01\x02", batch.encode_headers([("tag", b"a")]), None]))
    assert Filter.header_exists("tag").mask(b).tolist() == [False, True, False]
    assert Filter.header_exists("tag", False).mask(b).tolist() == [True, False, True]


def test_the_per_batch_shortcuts_give_the_same_answers():
    same = [(b"k", b"v", [("tag", b"a"), ("t", b"ab")], 0)] * 50  # every record the same headers: decoded once
    bare = [(b"k", b"v", [], 0)] * 50  # no headers at all
    for recs in (same, bare):
        b = make(recs, 0)
        for spec in ({"header": "tag", "eq": "a"}, {"header": "t", "prefix": "a"}, {"header": "tag", "exists": False}):
            assert Filter(spec).mask(b).tolist() == [model(spec, r[0], r[2]) for r in recs]


def test_key_tests_are_vectorised_over_keys_of_every_length():
    keys = [None, b"", b"a", b"ab", b"abc", b"user-1", b"user-22", b"x.json", b"json"] * 30
    b = bytes(batch.encode_batch([b"v"] * len(keys), keys))
    for spec in ({"key": {"eq": ""}}, {"key": {"in": ["a", "abc", "user-1", "json", "nope"]}},
                 {"key": {"prefix": "user-"}}, {"key": {"suffix": ".json"}}, {"key": {"prefix": ""}},
                 {"key": {"suffix": "user-22-long-er"}}, {"key": {"exists": True}}):
        assert Filter(spec).mask(b).tolist() == [model(spec, k, []) for k in keys], spec


def test_sub_batch_refuses_an_empty_or_outside_range():
    b = make([(None, b"v", [], 0)] * 3, 0)
    h = batch.read_header(b)
    table, starts = batch.value_bounds(b, 0, h)
    for first, end in ((1, 1), (2, 4), (-1, 2)):
        with pytest.raises(ValueError):
            batch.sub_batch(b, 0, h, table, starts, first, end)
    whole = batch.sub_batch(b, 0, h, table, starts, 0, 3)
    assert bytes(whole) == b  # every record: the same batch, CRC and all


def test_needle_bytes_outside_a_records_headers_or_inside_other_values_do_not_match():
    """Header tests first look for the value's (or name's) bytes with numpy,
    then decode only those records: bytes found in keys, values, across two
    records, or inside a longer header value must not make a match."""
    recs = [
        (b"rare", b"rare", [("tag", b"common")], 0),  # in the key and the value
        (None, b"xxra", [("tag", b"rely")], 0),  # half the needle in the value, a similar header value
        (None, b"", [("tag", b"rarely")], 0),  # a longer value
        (None, b"", [("tag", b"xrare")], 0),
        (None, b"", [("rare", b"tag")], 0),  # the needle as a name
        (None, b"", [("tag", b"common"), ("tag", b"rare")], 0),  # a repeated name: any pair counts
        (None, b"", [("tag", b"rare")], 0),
        (b"tag", b"\x91\x92\xa3tag\xc4\x04rare", [], 0),  # a value that is the encoded headers of a match
    ]
    b = make(recs, 0)
    for spec, want in (({"header": "tag", "eq": "rare"}, [5, 6]),
                       ({"header": "tag", "prefix": "rare"}, [2, 5, 6]),
                       ({"header": "tag", "suffix": "rare"}, [3, 5, 6]),
                       ({"header": "rare", "exists": True}, [4]),
                       ({"header": "tag", "exists": False}, [4, 7]),
                       ({"not": {"header": "tag", "in": ["rare", "common"]}}, [1, 2, 3, 4, 7])):
        mask = Filter(spec).mask(b)
        assert mask.tolist() == [model(spec, r[0], r[2]) for r in recs], spec
        assert [i for i, x in enumerate(mask) if x] == want, spec


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.none() | st.sampled_from([b"ra", b"rare", b"tag"]),
                          st.sampled_from([b"", b"rare", b"\xa3tag\xc4\x04rare", b"ta", b"g\xc4"]),
                          st.lists(st.tuples(st.sampled_from(["tag", "rare", "ta"]),
                                             st.sampled_from([b"rare", b"", b"rarer", b"ra", b"tag"])), max_size=3),
                          st.just(0)), min_size=1, max_size=30),
       st.sampled_from([{"header": "tag", "eq": "rare"}, {"header": "tag", "in": ["", "ra"]},
                        {"header": "ta", "exists": True}, {"header": "tag", "prefix": "ra"},
                        {"header": "rare", "suffix": "g"}, {"header": "tag", "exists": False}]))
def test_header_tests_with_needles_everywhere_follow_the_model(recs, spec):
    b = make(recs, 0)
    assert Filter(spec).mask(b).tolist() == [model(spec, r[0], r[2]) for r in recs]


@settings(max_examples=100, deadline=None)
@given(st.lists(record, min_size=1, max_size=40), st.data())
def test_record_lists_reads_small_and_large_batches_alike(recs, data):
    b = make(recs, 7)
    h = batch.read_header(b)
    first = data.draw(st.integers(min_value=0, max_value=len(recs) - 1))
    ts, kl, vl, hl, starts = batch.record_lists(b, 0, h, first)
    want = batch.records_of(b)[first:]
    assert ts == [r.timestamp for r in want]
    assert [None if k < 0 else b[s:s + k] for k, s in zip(kl, starts)] == [r.key for r in want]
    assert [b[s + max(k, 0):s + max(k, 0) + v] for k, v, s in zip(kl, vl, starts)] == [r.value for r in want]
    assert hl == [len(r.headers or b"") for r in want]


def test_many_needles_or_a_needle_everywhere_decode_every_record_and_agree():
    """The byte search gives way to decoding every record when it would cost
    more (more than MAX_NEEDLES needles, or a needle the data is full of);
    the answers are the same."""
    recs = [(None, b"a" * 50, [("tag", b"a" * 30)], 0), (None, b"a" * 50, [("tag", b"a" * 29 + b"b")], 0),
            (None, b"a" * 50, [("t", b"a" * 30)], 0)] * 20
    b = make(recs, 0)
    many = {"header": "tag", "in": [str(i) for i in range(filter_eval.MAX_NEEDLES + 1)] + ["a" * 30]}
    everywhere = {"header": "tag", "eq": "a" * 30}
    for spec in (many, everywhere, {"not": everywhere}):
        assert Filter(spec).mask(b).tolist() == [model(spec, r[0], r[2]) for r in recs]
    assert filter_eval.find_all(np.frombuffer(b"a" * 1000, np.uint8), b"a" * 30, limit=100) is None
    assert filter_eval.find_all(np.frombuffer(b"xxabcabc", np.uint8), b"abc", limit=1).tolist() == [2, 5]
