"""The server-side filter language (hpbroker/protocol/filters.py, docs/protocol.md
"Filters"): what it accepts, and every limit and error, without sockets."""

from __future__ import annotations

import msgspec
import pytest

from hpbroker import Filter
from hpbroker.net.fetch import FetchService
from hpbroker.protocol import codec, filters
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.filters import (MAX_DEPTH, MAX_FILTER_BYTES, MAX_STRING, MAX_TERMS, MAX_VALUES, FilterError)

enc = msgspec.msgpack.encode

GOOD = [
    {"header": "tag", "in": ["a", "b"]},
    {"header": "tag", "eq": b"\x00\xff"},
    {"header": "tag", "prefix": "or"},
    {"header": "tag", "suffix": ""},
    {"header": "trace-id", "exists": True},
    {"header": "trace-id", "exists": False},
    {"key": {"eq": "user-1"}},
    {"key": {"in": [b"a", "b", ""]}},
    {"key": {"prefix": "user-"}},
    {"key": {"suffix": b".json"}},
    {"key": {"exists": False}},
    {"and": [{"key": {"prefix": "u"}}, {"not": {"header": "tag", "in": ["x"]}}]},
    {"or": [{"header": "tag", "eq": "a"}, {"and": [{"key": {"exists": True}}, {"header": "p", "exists": True}]}]},
]


@pytest.mark.parametrize("spec", GOOD, ids=lambda s: enc(s).hex()[:24])
def test_every_documented_form_parses_and_round_trips_as_msgpack(spec):
    f = Filter(spec)
    assert Filter.decode(f.encode()) == f
    assert filters.from_fetch(msgspec.Raw(f.encode())) == f


def test_the_builder_spells_the_same_filters():
    tag = Filter.header_in("tag", ["a", "b"])
    assert tag.spec == {"header": "tag", "in": ["a", "b"]}
    assert Filter.key_prefix("user-").spec == {"key": {"prefix": "user-"}}
    assert Filter.key_exists(False).spec == {"key": {"exists": False}}
    both = tag & ~Filter.key_eq(b"k")
    assert both.spec == {"and": [{"header": "tag", "in": ["a", "b"]}, {"not": {"key": {"eq": b"k"}}}]}
    either = Filter.header_exists("x") | {"key": {"suffix": "z"}}
    assert either.spec == {"or": [{"header": "x", "exists": True}, {"key": {"suffix": "z"}}]}
    assert Filter.of(either) is either and Filter.of(either.spec) == either
    for f in (Filter.header_eq("a", "b"), Filter.header_prefix("a", "b"), Filter.header_suffix("a", "b"),
              Filter.key_in(["a"]), Filter.key_suffix("s"), Filter.all_of(tag), Filter.any_of(tag, tag)):
        assert Filter.decode(f.encode()) == f


def test_null_and_unset_mean_no_filter():
    assert filters.from_fetch(msgspec.UNSET) is None
    assert filters.from_fetch(msgspec.Raw(b"\xc0")) is None


def err(spec) -> str:
    with pytest.raises(FilterError) as ei:
        Filter(spec)
    return str(ei.value)


@pytest.mark.parametrize("spec,says", [
    ([], "filter: a filter is a map, got a list"),
    ("tag", "filter: a filter is a map, got a string"),
    ({}, "expected one of"),
    ({"and": []}, "filter.and: a non-empty list of filters, got an empty list"),
    ({"or": {"key": {"exists": True}}}, "filter.or: a non-empty list of filters, got a map"),
    ({"not": [{"key": {"exists": True}}]}, "filter.not: a filter is a map, got a list"),
    ({"xor": []}, "unknown operator 'xor'"),
    ({"and": [{"key": {"exists": True}}], "or": []}, "got keys ['and', 'or']"),
    ({1: "x"}, "map keys are strings, got an integer"),
    ({"header": "tag"}, "a header filter holds its name and exactly one test"),
    ({"header": "tag", "in": ["a"], "eq": "b"}, "got ['eq', 'in']"),
    ({"header": "", "exists": True}, "filter.header: a header name is a non-empty string"),
    ({"header": 7, "exists": True}, "a header name is a non-empty string, got an integer"),
    ({"header": "tag", "regex": ".*"}, "filter: unknown test 'regex'"),
    ({"header": "tag", "in": []}, "filter.in: a non-empty list of values, got an empty list"),
    ({"header": "tag", "in": "a"}, "filter.in: a non-empty list of values, got a string"),
    ({"header": "tag", "in": ["a", 3]}, "filter.in[1]: a value is a string or bytes, got an integer"),
    ({"header": "tag", "eq": None}, "filter.eq: a value is a string or bytes, got null"),
    ({"header": "tag", "exists": 1}, "filter.exists: true or false, got an integer"),
    ({"key": "user"}, "filter.key: a map holding one test"),
    ({"key": {"eq": "a", "prefix": "b"}}, "filter.key: a map holding one test"),
    ({"key": {"like": "a%"}}, "filter.key: unknown test 'like'"),
    ({"and": [{"key": {"exists": True}}, {"or": [{"header": "t", "eq": 1.5}]}]},
     "filter.and[1].or[0].eq: a value is a string or bytes, got a float"),
])
def test_bad_filters_say_what_and_where(spec, says):
    assert says in err(spec)


def nested(depth: int) -> dict:
    f: dict = {"key": {"exists": True}}
    for _ in range(depth - 1):
        f = {"not": f}
    return f


def test_limits_on_depth_terms_values_and_strings():
    Filter(nested(MAX_DEPTH))
    assert f"nested deeper than {MAX_DEPTH} levels" in err(nested(MAX_DEPTH + 1))
    leaves = [{"key": {"exists": True}}] * (MAX_TERMS - 1)
    Filter({"or": leaves})  # the or and its leaves: exactly MAX_TERMS
    assert f"more than {MAX_TERMS} terms" in err({"or": leaves + [leaves[0]]})
    assert f"more than {MAX_TERMS} terms" in err({"and": [{"or": leaves[:40]}, {"or": leaves[:40]}]})
    Filter({"header": "t", "in": [str(i) for i in range(MAX_VALUES)]})
    assert f"more than {MAX_VALUES} values" in err({"header": "t", "in": [str(i) for i in range(MAX_VALUES + 1)]})
    assert f"more than {MAX_VALUES} values" in err(
        {"or": [{"header": "t", "in": [str(i) for i in range(200)]}, {"key": {"in": [str(i) for i in range(57)]}}]})
    Filter({"header": "n" * MAX_STRING, "eq": b"v" * MAX_STRING})
    assert f"value longer than {MAX_STRING} bytes" in err({"header": "t", "eq": b"v" * (MAX_STRING + 1)})
    assert f"value longer than {MAX_STRING} bytes" in err({"key": {"prefix": "é" * (MAX_STRING // 2 + 1)}})
    assert f"name longer than {MAX_STRING} bytes" in err({"header": "n" * (MAX_STRING + 1), "exists": True})


def test_the_size_is_checked_before_anything_is_decoded():
    big = enc({"header": "t", "in": ["x" * 200] * 30})
    assert len(big) > MAX_FILTER_BYTES
    with pytest.raises(FilterError, match=f"{len(big)} bytes of msgpack, more than {MAX_FILTER_BYTES}"):
        Filter.decode(big)
    with pytest.raises(FilterError, match="more than"):
        Filter.decode(b"\xdd\xff\xff\xff\xff" + b"\x00" * MAX_FILTER_BYTES)  # would claim 4 G entries


@pytest.mark.parametrize("raw", [b"", b"\x81", b"\xc1", b"\x91" * 3000 + b"\xc0", b"\x81\xa3not" * 1000 + b"\xc0"])
def test_garbage_or_pathological_msgpack_is_a_filter_error(raw):
    with pytest.raises(FilterError):
        Filter.decode(raw)


def test_a_fetch_header_carries_the_filter_as_a_map_and_leaves_it_out_when_unset():
    f = Filter.header_in("tag", ["a"])
    head = codec.encode_request(m.Fetch(id=1, topic="t", partition=0, offset=0, filter=msgspec.Raw(f.encode())))[0]
    assert msgspec.msgpack.decode(head)["filter"] == {"header": "tag", "in": ["a"]}
    req, _ = codec.decode_request([head])
    assert filters.from_fetch(req.filter) == f
    plain = codec.encode_request(m.Fetch(id=1, topic="t", partition=0, offset=0))[0]
    assert "filter" not in msgspec.msgpack.decode(plain)  # what old brokers received: unchanged
    req, _ = codec.decode_request([enc({"t": "Fetch", "id": 1, "topic": "t", "partition": 0, "offset": 0})])
    assert req.filter is msgspec.UNSET  # what old clients send


@pytest.mark.parametrize("depth", [100, 5000])
def test_a_deep_filter_in_a_fetch_header_is_a_bad_request_not_a_crash(depth):
    head = enc({"t": "Fetch", "id": 9, "topic": "t", "partition": 0, "offset": 0})  # a fixmap of 5
    # the header map with one more key, "filter", whose value is `depth` nested arrays
    raw = bytes([head[0] + 1]) + head[1:] + b"\xa6filter" + b"\x91" * depth + b"\xc0"
    try:
        req, _ = codec.decode_request([raw])
    except codec.ProtocolError as e:
        # deeper than msgpack decoding goes at all: the header is unreadable (docs/protocol.md, section 4)
        assert depth > 1000 and e.code == ErrorCode.BAD_REQUEST
        assert codec.protocol_error_reply(e).code == ErrorCode.BAD_REQUEST
        return
    with pytest.raises(BrokerError) as ei:
        FetchService("/nonexistent", 1 << 20).filter_of(req)
    assert ei.value.code == ErrorCode.BAD_REQUEST and "a filter is a map" in ei.value.message


def test_the_acceptor_side_check_is_bad_request_with_the_reason_and_caches_good_filters():
    svc = FetchService("/nonexistent", 1 << 20)
    bad = m.Fetch(id=1, topic="t", partition=0, offset=0, filter=msgspec.Raw(enc({"header": "tag", "in": []})))
    with pytest.raises(BrokerError) as ei:
        svc.filter_of(bad)
    assert ei.value.code == ErrorCode.BAD_REQUEST
    assert ei.value.message == "bad filter: filter.in: a non-empty list of values, got an empty list"
    good = m.Fetch(id=2, topic="t", partition=0, offset=0, filter=msgspec.Raw(enc({"key": {"exists": True}})))
    f1 = svc.filter_of(good)
    assert svc.filter_of(good) is f1
    assert svc.filter_of(m.Fetch(id=3, topic="t", partition=0, offset=0)) is None
    assert svc.filter_of(m.Fetch(id=3, topic="t", partition=0, offset=0, filter=msgspec.Raw(b"\xc0"))) is None
    for i in range(300):  # the cache stays bounded
        svc.filter_of(m.Fetch(id=4, topic="t", partition=0, offset=0, filter=msgspec.Raw(enc({"key": {"eq": str(i)}}))))
    assert len(svc._filters) <= 256
