"""The MetaQ text protocol's parser, without sockets (hpbroker/text/parser.py).

Hand-written cases pin each verb's fields and each refusal; hypothesis
checks what must hold for any input: feeding it in any split gives the same
commands, the fast path (runs of puts) gives what the one-command path
gives, nothing raises, and the parser never holds more than its limits.
A long run of the same fuzzer is ``tools/fuzz-text-parser``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpbroker.text.parser import Get, Offset, Parser, Put, PutRun, Quit, Refused, Stats, Transaction, Version


def parse(data: bytes, *, fast: bool = True, split: int | None = None, max_line: int = 4096,
          max_body: int = 1 << 20) -> list:
    """Every command in ``data`` fed in pieces of ``split`` bytes, PutRuns opened up into Puts."""
    p = Parser(max_line, max_body)
    p.fast = fast
    out = []
    step = split or len(data) or 1
    for i in range(0, len(data), step):
        out += p.feed(data[i:i + step])
    return flat(out)


def flat(events: list) -> list:
    out = []
    for e in events:
        out += e.puts() if isinstance(e, PutRun) else [e]
    return out


def key(e) -> tuple:
    """A comparable picture of a command."""
    slots = type(e).__slots__
    return (type(e).__name__, *(bytes(getattr(e, s)) if s == "body" else getattr(e, s) for s in slots))


def test_put_in_both_forms_and_with_a_transaction_key():
    got = parse(b"put logs 3 5 0 123 7\r\nhelloput logs 3 3 1 -9\r\nabc"
                b"put logs 3 2 0 TX:s:1 8\r\nhiput logs 3 2 0 55 TX:s:2 9\r\nyo")
    assert [key(e) for e in got] == [
        ("Put", "logs", 3, 0, 123, None, b"7", b"hello"),
        ("Put", "logs", 3, 1, -1, None, b"-9", b"abc"),
        ("Put", "logs", 3, 0, -1, "TX:s:1", b"8", b"hi"),
        ("Put", "logs", 3, 0, 55, "TX:s:2", b"9", b"yo"),
    ]


def test_the_other_verbs():
    got = parse(b"get logs g1 2 1024 65536 11\r\noffset logs g1 2 99 12\r\nstats\r\nstats topics\r\n"
                b"stats  13\r\nstats logs 14\r\nversion\r\nversion 15\r\nquit\r\n"
                b"transaction TX:abc:1 abc BEGIN 16\r\ntransaction XID:1:ab:cd:q s PREPARE 30 q 17\r\n")
    assert [key(e) for e in got] == [
        ("Get", "logs", "g1", 2, 1024, 65536, b"11"),
        ("Offset", "logs", "g1", 2, 99, b"12"),
        ("Stats", "", None),
        ("Stats", "topics", None),
        ("Stats", "", b"13"),
        ("Stats", "logs", b"14"),
        ("Version", None),
        ("Version", b"15"),
        ("Quit",),
        ("Transaction", "TX:abc:1", "abc", "BEGIN", 0, None, b"16"),
        ("Transaction", "XID:1:ab:cd:q", "s", "PREPARE", 30, "q", b"17"),
    ]


def test_a_bad_field_is_refused_with_the_opaque_and_the_parse_goes_on():
    got = parse(b"get logs g x 0 100 5\r\nput logs 0 3 zz -1 6\r\nabcversion 7\r\n")
    assert isinstance(got[0], Refused) and got[0].opaque == b"5" and "partition" in got[0].message
    assert isinstance(got[1], Refused) and got[1].opaque == b"6" and not got[1].fatal  # its body skipped
    assert key(got[2]) == ("Version", b"7")


def test_unknown_verbs_and_blank_lines_are_unknown_not_fatal():
    got = parse(b"flush_all\r\n\r\nversion 1\r\n")
    assert [type(e) for e in got] == [Refused, Refused, Version]
    assert got[0].unknown and got[1].unknown


def test_a_put_whose_length_cannot_be_read_ends_the_stream():
    p = Parser()
    got = p.feed(b"put logs 0 lots 0 -1 3\r\nabcversion 4\r\n")
    assert len(got) == 1 and got[0].fatal and got[0].opaque == b"3"
    assert p.closed and p.feed(b"version 5\r\n") == []


def test_a_line_longer_than_the_limit_ends_the_stream_without_holding_it():
    p = Parser(max_line=64)
    assert p.feed(b"get " + b"x" * 60) == []
    got = p.feed(b"y" * 10)
    assert len(got) == 1 and got[0].fatal and p.buffered == 0


def test_an_oversized_body_is_skipped_as_it_arrives_not_held():
    p = Parser(max_body=100)
    got = p.feed(b"put logs 0 1000 0 -1 9\r\n" + b"z" * 300)
    assert len(got) == 1 and got[0].opaque == b"9" and "larger than the limit" in got[0].message
    assert p.buffered == 0
    assert p.feed(b"z" * 700 + b"version 10\r\n")[0].opaque == b"10"


def test_a_body_waits_for_its_last_byte():
    p = Parser()
    assert p.feed(b"put logs 0 5 0 -1 1\r\nhel") == []
    got = flat(p.feed(b"lo"))
    assert key(got[0])[-1] == b"hello" and p.buffered == 0


def test_runs_of_puts_are_read_together():
    data = b"".join(b"put logs 1 3 0 -1 %d\r\nabc" % i for i in range(50)) + b"put other 1 1 0 -1 99\r\nx"
    events = Parser().feed(data)
    assert [type(e) for e in events] == [PutRun, PutRun]
    assert len(events[0].bodies) == 50 and events[0].checksums is None and events[0].flags is None


def test_a_body_that_holds_the_next_puts_line_is_read_as_a_body():
    # putscan guesses the puts from where their lines' head occurs; a body
    # holding a whole put line must stay a body (the chain check cuts the run)
    fake = b"put logs 1 3 0 -1 77\r\nzzz"
    data = b"".join(b"put logs 1 %d 0 -1 %d\r\n%s" % (len(b), i, b)
                    for i, b in enumerate([b"a", fake, b"b" + fake, b"c", fake[:-3]]))
    got = parse(data)
    assert [key(e)[-1] for e in got] == [b"a", fake, b"b" + fake, b"c", fake[:-3]]
    assert [key(e) for e in got] == [key(e) for e in parse(data, fast=False)]


def test_bodies_full_of_the_heads_first_byte_are_read_one_by_one():
    # too many candidates for putscan: the parser's loop reads the run
    data = b"".join(b"put plogs 1 40 0 -1 %d\r\n" % i + b"p" * 40 for i in range(30))
    events = Parser().feed(data)
    assert [type(e) for e in events] == [PutRun] and len(events[0].bodies) == 30
    assert all(bytes(b) == b"p" * 40 for b in events[0].bodies)


def test_the_opaque_must_be_an_int32():
    got = parse(b"version 2147483648\r\nversion -2147483648\r\nversion 0x10\r\n")
    assert [type(e) for e in got] == [Refused, Version, Refused]


# -- hypothesis ------------------------------------------------------------------------------

FIELD = st.one_of(st.integers(-(2 ** 31), 2 ** 31 - 1).map(str), st.sampled_from(["-1", "0", "1", "+5", "00",
                                                                                   "2147483648", "x", "", "TX:a:1"]))
TOPIC = st.sampled_from(["logs", "a.b", "t-1", "", "x y"])


@st.composite
def command(draw) -> bytes:
    kind = draw(st.sampled_from(["put", "put", "put", "put6", "get", "offset", "stats", "version", "quit",
                                 "transaction", "sync", "junk", "blank"]))
    if kind in ("put", "put6"):
        body = draw(st.binary(max_size=40))
        length = draw(st.one_of(st.just(str(len(body))), FIELD)) if draw(st.booleans()) is False else str(len(body))
        fields = [draw(TOPIC), draw(FIELD), length, draw(FIELD)]
        if kind == "put":
            fields.append(draw(FIELD))
        fields.append(draw(FIELD))
        return ("put " + " ".join(fields) + "\r\n").encode() + body
    if kind == "get":
        return ("get " + " ".join([draw(TOPIC), "g", draw(FIELD), draw(FIELD), draw(FIELD), draw(FIELD)]) + "\r\n").encode()
    if kind == "offset":
        return ("offset " + " ".join([draw(TOPIC), "g", draw(FIELD), draw(FIELD), draw(FIELD)]) + "\r\n").encode()
    if kind == "stats":
        return ("stats " + " ".join(draw(st.lists(st.sampled_from(["", "topics", "5", "x"]), max_size=3))) + "\r\n").encode()
    if kind == "version":
        return ("version " + draw(FIELD) + "\r\n").encode()
    if kind == "transaction":
        return ("transaction TX:a:1 s " + draw(st.sampled_from(["BEGIN", "END", "NOPE"])) + " " + draw(FIELD) + "\r\n").encode()
    if kind == "sync":
        body = draw(st.binary(max_size=10))
        return f"sync logs 0 {len(body)} 0 42 {draw(FIELD)}\r\n".encode() + body
    if kind == "blank":
        return b"\r\n"
    return draw(st.binary(max_size=30).filter(lambda b: b"\r\n" not in b)) + b"\r\n"


@st.composite
def put_run(draw) -> bytes:
    """Puts sharing a topic and partition (the fast path's input), now and then with a bad field."""
    topic, partition = draw(st.sampled_from(["logs", "a.b"])), draw(st.sampled_from(["0", "7", "-1"]))
    six = draw(st.booleans())
    out = []
    for _ in range(draw(st.integers(1, 8))):
        body = draw(st.binary(max_size=30))
        bad = draw(st.integers(0, 30)) == 0  # now and then one bad field
        flag = draw(st.sampled_from(["1", "x", "-0"] if bad else ["0", "0", "0", "0", "1"]))
        opaque = draw(st.sampled_from(["2147483648", "+3", "1_0"] if bad else ["1", "-2147483648", "2147483647", "99"]))
        fields = [topic, partition, str(len(body)), flag]
        if not six:
            fields.append(draw(st.sampled_from(["2147483648", "TX:a:1", "1e3"] if bad else ["-1", "12345", "0"])))
        fields.append(opaque)
        out.append(("put " + " ".join(fields) + "\r\n").encode() + body)
    return b"".join(out)


STREAM = st.lists(st.one_of(command(), put_run(), st.binary(max_size=20)), max_size=25).map(b"".join)
#: tools/fuzz-text-parser runs these with many more examples
FUZZ = settings(max_examples=int(os.environ.get("HPBROKER_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(STREAM, st.integers(1, 64))
def test_any_split_of_the_input_gives_the_same_commands(data, split):
    whole = [key(e) for e in parse(data)]
    assert [key(e) for e in parse(data, split=split)] == whole


@FUZZ
@given(STREAM)
def test_the_fast_path_reads_what_the_one_command_path_reads(data):
    assert [key(e) for e in parse(data, fast=True)] == [key(e) for e in parse(data, fast=False)]


@FUZZ
@given(STREAM, st.integers(1, 97), st.integers(64, 200), st.integers(1, 100))
def test_hostile_input_never_raises_and_stays_within_the_limits(data, split, max_line, max_body):
    p = Parser(max_line, max_body)
    for i in range(0, len(data), split):
        events = p.feed(data[i:i + split])
        for e in flat(events):
            assert isinstance(e, (Put, Get, Offset, Stats, Version, Quit, Transaction, Refused))
            if isinstance(e, Put):
                assert len(e.body) <= max_body
        # an unfinished command is held only while it could still be valid
        assert p.buffered <= max_line + 2 + max_body + split
        if p.closed:
            assert p.buffered == 0
            break


@FUZZ
@given(st.one_of(st.text(max_size=80), st.from_regex(r"(TX|XID|null)(:[-0-9A-Za-z]{0,12}){0,5}", fullmatch=True)))
def test_a_transaction_key_is_read_or_refused_and_reads_back_as_itself(text):
    from hpbroker.text import txkeys as K

    try:
        key = K.parse(text)
    except K.BadKey as e:
        assert str(e).startswith("Illegal transaction key:")
        return
    assert K.parse(key.txid) == key and len(key.txid) <= K.MAX_TXID
