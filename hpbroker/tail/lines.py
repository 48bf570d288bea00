"""Cut a chunk of a log file into records: lines, or multiline records.

Pure functions over ``bytes``: no files, no clocks.  The caller reads a
chunk starting where the previous call stopped and passes it in with two
flags; it gets back the records and how many bytes of the chunk they used.
The bytes after ``consumed`` are read again next time (the agent re-reads
from the file rather than carrying a tail in memory), so a call never has
to remember anything.

Per-chunk work, not per-line Python: single lines are one ``bytes.split``;
multiline records are found with one ``finditer`` of the start pattern
over the chunk (``re.MULTILINE``), so the Python loop runs once per
*record*, not once per line.

Rules (docs/tail.md, "Lines and records"):

* A record ends at ``\\n``, which is not part of it (a ``\\r`` before it is
  kept: lines are shipped as the bytes the file holds).
* An unterminated last line is kept back (the writer is still writing it)
  unless ``final`` (the file was rotated away or deleted and has gone
  quiet, or ``--once``).
* A record longer than ``max_record`` is **split** into pieces of
  ``max_record`` bytes, shipped in order as separate records: nothing is
  dropped.
* Multiline: a line that matches the start pattern begins a record; any
  other line is appended (with its ``\\n``) to the record before it.  The
  last record of a chunk is kept back, since its continuation lines may
  still come, unless ``flush`` (the file has been quiet for the multiline
  timeout) or ``final``.  Lines before the first start line of a chunk
  that is not at a record start (the record they continue was already
  shipped) go as one record of their own.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Cut(NamedTuple):
    records: list[bytes]
    consumed: int  # bytes of the chunk the records account for (their "\n"s included)


def _pieces(rec: bytes, max_record: int) -> list[bytes]:
    return [rec[i:i + max_record] for i in range(0, len(rec), max_record)] or [b""]


def _split_long(records: list[bytes], max_record: int) -> list[bytes]:
    out: list[bytes] = []
    for r in records:
        if len(r) > max_record:
            out += _pieces(r, max_record)
        else:
            out.append(r)
    return out


def _ship_overgrown(data: bytes, keep: int, records: list[bytes], max_record: int) -> Cut:
    """What is kept back (from ``keep`` to the end of the chunk) has
    outgrown a record: ship its whole ``max_record`` pieces now, so a line
    longer than a read always makes progress."""
    left = len(data) - keep
    # At least one byte stays kept back: if the line's "\n" comes next, the
    # last piece goes with it, instead of the "\n" making an empty record of
    # its own (a line of exactly k * max_record bytes read up to its end).
    whole = (left - 1) // max_record * max_record
    if whole <= 0:
        return Cut(records, keep)
    return Cut(records + _pieces(data[keep:keep + whole], max_record), keep + whole)


def has_long_line(data: bytes, end: int, max_record: int) -> bool:
    """Is there a line longer than ``max_record`` in ``data[:end]`` (whole
    lines)?  Steps from newline to the last newline within the next
    ``max_record + 1`` bytes: about ``end / max_record`` ``rfind`` calls,
    not a Python step per line (py-spy: ``max(map(len, lines))`` took 4 %
    of the agent's samples)."""
    pos = 0
    while end - pos > max_record:
        nl = data.rfind(b"\n", pos, pos + max_record + 1)
        if nl < 0:
            return True
        pos = nl + 1
    return False


def split_lines(data: bytes, max_record: int, final: bool = False) -> Cut:
    """Single-line records of ``data``."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last "\n": b"" or an unterminated line
    consumed = len(data) - len(tail)
    if consumed > max_record and has_long_line(data, consumed, max_record):
        lines = _split_long(lines, max_record)
    if not tail:
        return Cut(lines, consumed)
    if final:
        return Cut(lines + _pieces(tail, max_record), len(data))
    return _ship_overgrown(data, consumed, lines, max_record)


class Multiline:
    """Records that start at a line matching ``start`` (a compiled bytes
    pattern); the other lines continue the record before them."""

    def __init__(self, start: re.Pattern, max_record: int):
        self.max_record = max_record
        # "^" under MULTILINE: the pattern is tried at each line start only
        self._starts = re.compile(b"^(?:" + start.pattern + b")", start.flags | re.MULTILINE)

    def split(self, data: bytes, flush: bool = False, final: bool = False) -> Cut:
        """``flush``: also ship the last record of the complete lines (the
        file has been quiet for the multiline timeout).  ``final``: ship
        everything, the unterminated last line included.

        Position 0 always begins a record: it is where the previous call
        stopped, which is a start line, or the rest of a record that was
        shipped already (split at ``max_record``, or flushed)."""
        max_record = self.max_record
        end = len(data) if final else data.rfind(b"\n") + 1  # complete lines only, unless final
        if end == 0:
            return _ship_overgrown(data, 0, [], max_record)
        bounds = [0]
        bounds += [s for s in self._find_starts(data, end) if 0 < s < end]
        if flush or final:
            bounds.append(end)
            keep = end
        else:
            keep = bounds[-1]
        records = [data[a:b - 1] for a, b in zip(bounds, bounds[1:])]  # each ends with "\n": drop it
        if keep == end and data[end - 1:end] != b"\n":  # final, unterminated: the last record has no "\n"
            records[-1] = data[bounds[-2]:end]
        if records and max(map(len, records)) > max_record:
            records = _split_long(records, max_record)
        if final:
            return Cut(records, end)
        return _ship_overgrown(data, keep, records, max_record)

    def _find_starts(self, data: bytes, end: int):
        return (m.start() for m in self._starts.finditer(data, 0, end))


class MultilineText(Multiline):
    """:class:`Multiline` for a pattern that must see text, not bytes (a
    non-ASCII pattern, or an encoding whose ASCII bytes can be parts of
    other characters): each line is decoded and matched, a Python step per
    line (docs/tail.md, "Encodings")."""

    def __init__(self, start: re.Pattern, encoding: str, max_record: int):
        self.max_record = max_record
        self.encoding = encoding
        self._match = start.match

    def _find_starts(self, data: bytes, end: int):
        enc, match = self.encoding, self._match
        pos = 0
        out = []
        for line in data[:end].split(b"\n"):
            if match(line.decode(enc, "replace")):
                out.append(pos)
            pos += len(line) + 1
        return out


def splitter(source, max_record: int):
    """The cut function for a source: ``cut(data, flush, final) -> Cut``."""
    if source.start_rx is None:
        return lambda data, flush=False, final=False: split_lines(data, max_record, final)
    m = Multiline(source.start_rx, max_record) if source.fast else MultilineText(source.start_rx, source.encoding, max_record)
    return m.split
