"""hpbroker.tail.lines: chunks cut into lines and multiline records, without files."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from hpbroker.tail.lines import Multiline, MultilineText, split_lines


def drive(cut, data: bytes, read: int, flush_every: int = 0) -> list[bytes]:
    """Read ``data`` as the agent does: a chunk of ``read`` bytes at the
    position the previous cut stopped at; the last reads are final."""
    pos, out, n = 0, [], 0
    while pos < len(data):
        chunk = data[pos:pos + read]
        final = pos + len(chunk) >= len(data)
        n += 1
        c = cut(chunk, bool(flush_every and n % flush_every == 0), final)
        out += c.records
        assert c.consumed > 0 or not final
        pos += c.consumed
        if not c.consumed:
            raise AssertionError(f"no progress at {pos} with a read of {read}")
    return out


def test_lines_keep_back_an_unterminated_line_until_final():
    assert split_lines(b"a\nbb\nccc", 100) == ([b"a", b"bb"], 5)
    assert split_lines(b"a\nbb\nccc", 100, final=True) == ([b"a", b"bb", b"ccc"], 8)
    assert split_lines(b"", 100) == ([], 0)
    assert split_lines(b"\n\n", 100) == ([b"", b""], 2)  # empty lines are records too
    assert split_lines(b"a\r\n", 100) == ([b"a\r"], 3)  # bytes as the file holds them


def test_a_line_longer_than_max_record_is_split_not_dropped():
    assert split_lines(b"x" * 25 + b"\nz\n", 10) == ([b"x" * 10, b"x" * 10, b"x" * 5, b"z"], 28)
    # unterminated and already over the limit: whole pieces go now, the rest waits
    assert split_lines(b"a\n" + b"y" * 25, 10) == ([b"a", b"y" * 10, b"y" * 10], 22)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b".")), max_size=60),
       read=st.integers(min_value=17, max_value=300), terminated=st.booleans())
def test_lines_any_read_size_gives_every_line_once_in_order(lines, read, terminated):
    max_record = 16
    data = b"\n".join(lines) + (b"\n" if terminated and lines else b"")
    got = drive(lambda d, flush, final: split_lines(d, max_record, final), data, read)
    want = []
    for ln in (data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n") if data else []):
        want += [ln[i:i + max_record] for i in range(0, len(ln), max_record)] or [b""]
    assert got == want


TRACE = b"""2024-01-01 12:00:00 ERROR boom
java.lang.RuntimeException: boom
\tat a.b.C.d(C.java:10)
\tat a.b.C.e(C.java:20)
2024-01-01 12:00:01 INFO fine
2024-01-01 12:00:02 WARN partial
\tat x
"""


def test_multiline_joins_a_stack_trace_and_keeps_the_last_record_back():
    m = Multiline(re.compile(rb"\d{4}-\d\d-\d\d "), 1 << 20)
    c = m.split(TRACE)
    assert c.records == [b"2024-01-01 12:00:00 ERROR boom\njava.lang.RuntimeException: boom\n\tat a.b.C.d(C.java:10)\n"
                         b"\tat a.b.C.e(C.java:20)", b"2024-01-01 12:00:01 INFO fine"]
    assert TRACE[c.consumed:] == b"2024-01-01 12:00:02 WARN partial\n\tat x\n"
    assert m.split(TRACE[c.consumed:], flush=True).records == [b"2024-01-01 12:00:02 WARN partial\n\tat x"]


def test_multiline_leading_continuation_lines_are_a_record_of_their_own():
    m = Multiline(re.compile(rb"S"), 100)
    assert m.split(b"  orphan\n  more\nS1\nS2\n") == ([b"  orphan\n  more", b"S1"], 19)


def test_multiline_text_path_decodes_for_a_non_ascii_pattern():
    m = MultilineText(re.compile(r"[ÄÖ]\d"), "utf-8", 100)
    data = "Ä1 first\n cont\nÖ2 second\n".encode()
    assert m.split(data, flush=True).records == ["Ä1 first\n cont".encode(), "Ö2 second".encode()]
    latin = MultilineText(re.compile(r"[ÄÖ]\d"), "latin-1", 100)
    assert latin.split("Ä1 a\n b\nÖ2 c\n".encode("latin-1"), flush=True).records == \
        ["Ä1 a\n b".encode("latin-1"), "Ö2 c".encode("latin-1")]


@settings(max_examples=300, deadline=None)
@given(recs=st.lists(st.tuples(st.sampled_from([b"S", b"T"]), st.lists(st.binary(max_size=12).map(
    lambda b: b.replace(b"\n", b".").replace(b"S", b"s")), max_size=4)), max_size=30),
       read=st.integers(min_value=65, max_value=400), flush_every=st.integers(min_value=0, max_value=3))
def test_multiline_any_read_size_gives_the_bytes_back_in_order(recs, read, flush_every):
    """Whatever the read size and flushes, the records joined with "\\n" are
    the file, and no record is longer than max_record."""
    max_record = 64
    lines = []
    for head, conts in recs:
        lines.append(head + b"x")
        lines += [b" " + c for c in conts]
    data = b"".join(ln + b"\n" for ln in lines)
    m = Multiline(re.compile(rb"S"), max_record)
    got = drive(m.split, data, read, flush_every)
    assert all(len(r) <= max_record for r in got)
    if data:
        # pieces of a split record lose no byte: re-joining with "\n" at record bounds gives the data back
        assert b"".join(got).replace(b"\n", b"") == data.replace(b"\n", b"")
        if not flush_every and all(len(r) < max_record for r in got):
            assert b"\n".join(got) + b"\n" == data
            assert all(r.startswith(b"S") for r in got[1:])


@settings(max_examples=300, deadline=None)
@given(lens=st.lists(st.integers(min_value=0, max_value=40), max_size=50), max_record=st.integers(min_value=1, max_value=30))
def test_has_long_line_agrees_with_the_longest_line(lens, max_record):
    from hpbroker.tail.lines import has_long_line

    data = b"".join(b"x" * n + b"\n" for n in lens)
    assert has_long_line(data, len(data), max_record) == (max(lens, default=0) > max_record)
