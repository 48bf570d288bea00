"""A run of puts found with a few whole-buffer operations, not a loop per put.

The parser's fast path (:meth:`hpbroker.text.parser.Parser._run`) reads
consecutive puts that share a *head*, ``put TOPIC PARTITION `` followed by
the same number of fields::

    put TOPIC PARTITION length flag [checksum] opaque \\r\\n  <length bytes of body>
    \\_____ head ______/ \\_______ fields ________/

Where each put starts depends on the length of the one before it, so a
loop per put is the obvious way; :func:`scan` instead *guesses* every put
of the chunk at once and then *checks* the guess, all in numpy and the
regular-expression engine:

1. the candidates: every place the head occurs (numpy: where the head's
   first byte is, then the head's bytes compared there);
2. each candidate's line: up to the first CR after it; the fields of all
   candidates gathered into one string, ``fields\\r`` per line, checked
   by a few scans of that string in C (:func:`_fields_ok`; when one
   line is bad, a regular-expression match says how many before it are
   good); the lengths turned to int64 in one numpy call, and the other
   fields only when they are not all the usual value (flag 0, checksum
   -1, opaques of up to 9 digits);
3. the chain: candidate k+1 must start exactly where candidate k's body
   ends (line end + 2 + length).  The first candidate is the put the
   parser is at, so by induction every candidate the chain reaches is a
   real put; a candidate inside a body (a body that contains the head)
   breaks the chain, and the run ends at the put that holds it, the parser
   going on right after that put's body (and a new run may start there).

So the result is exactly what the loop reads, or a shorter run (never a
wrong one), whatever the bodies hold.  Bodies full of the head's first
byte would make many candidates: past :data:`MAX_CANDIDATE_SHARE` the
caller reads the run with its loop instead.
"""

from __future__ import annotations

import re

import numpy as np

#: more candidates than one per this many bytes: not worth it, use the loop
MAX_CANDIDATE_SHARE = 48

_FIELDS = {  # fields after the head of a line, each ended by its CR: length flag [checksum] opaque
    3: re.compile(rb"(?:[0-9]{1,10} -?[0-9]{1,10} -?[0-9]{1,10}\r)+"),
    4: re.compile(rb"(?:[0-9]{1,10} -?[0-9]{1,10} -?[0-9]{1,10} -?[0-9]{1,10}\r)+"),
}


def scan(buf: bytes, pos: int, n: int, head: bytes, want: int, max_line: int, max_body: int):
    """The run of puts with this ``head`` and ``want`` fields starting at
    ``pos`` (where such a put's line is known to start), bodies complete
    within ``buf[:n]``: (body starts, body ends, fields, values), each put's
    fields ``want`` consecutive items of ``fields`` (bytes, as sent) and a
    row of ``values`` (int64; flag, checksum and opaque within int32); or
    None when the caller should read it with its loop (too many candidates)."""
    a = np.frombuffer(buf, dtype=np.uint8, count=n)
    hl = len(head)
    seg = a[pos:n - hl]
    cand = (seg == head[0]).nonzero()[0]
    if len(cand) > len(seg) // MAX_CANDIDATE_SHARE + 8:
        return None
    cand += pos
    if hl > 1:
        h = np.frombuffer(head, dtype=np.uint8)
        cand = cand[(a[cand[:, None] + np.arange(1, hl)] == h[1:]).all(axis=1)]
    if not len(cand) or cand[0] != pos:
        return None
    crs = (a[pos:n - 1] == 13).nonzero()[0]
    crs += pos
    k = crs.searchsorted(cand + hl)
    cand = cand[k < len(crs)]  # a line not ended yet
    ends = crs[k[:len(cand)]]
    ok = (ends - cand <= max_line) & (a[ends + 1] == 10)
    if not ok.all():
        cut = int(np.argmin(ok))
        cand, ends = cand[:cut], ends[:cut]
    if not len(cand):
        return ((), (), (), None)
    # every line's fields and its CR, in one string
    starts = cand + hl
    lens = ends + 1 - starts
    at = lens.cumsum()
    idx = np.arange(int(at[-1]), dtype=np.int64)
    idx += (starts - (at - lens)).repeat(lens)
    text = a[idx].tobytes()
    lines = len(cand)
    if not _fields_ok(text, lines, want):  # not all lines are well formed: the regular expression says how many are
        m = _FIELDS[want].match(text)
        if m is None:
            return ((), (), (), None)
        lines = text.count(b"\r", 0, m.end())
        text = text[:m.end()]
    fields = text.split()
    # the int32 fields (flag, checksum, opaque) as int64, the columns that need it
    values = np.zeros((lines, want), dtype=np.int64)
    usual = _USUAL[want]
    good = lines
    for col in range(1, want):
        column = fields[col::want]
        if col in usual and column.count(usual[col]) == lines:
            values[:, col] = int(usual[col])  # nothing to convert
            continue
        if col == want - 1 and max(map(len, column)) < 10:
            continue  # opaques of at most 9 digits (or '-' and 8) are int32s; they are echoed as sent
        values[:, col] = _ints(column)
        bad = (values[:, col] < INT32_MIN) | (values[:, col] > INT32_MAX)
        if bad.any():
            good = min(good, int(np.argmax(bad)))
    lengths = _ints(fields[0:good * want:want])
    cand, ends = cand[:good], ends[:good]
    bstart = ends + 2
    bend = bstart + lengths
    complete = (bend <= n) & (lengths <= max_body)
    linked = np.empty(good, dtype=bool)
    linked[:-1] = bend[:-1] == cand[1:]
    linked[-1:] = True
    count = good
    if not complete.all():
        count = int(np.argmin(complete))
    if not linked.all():
        count = min(count, int(np.argmin(linked)) + 1)
    return bstart[:count], bend[:count], fields[:count * want], values[:count]


INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
_SEPARATORS = {want: b" " * (want - 1) + b"\r" for want in _FIELDS}


#: the fields' usual values (flag 0, no checksum), which need no conversion
_USUAL = {3: {1: b"0"}, 4: {1: b"0", 2: b"-1"}}


def _ints(column: list) -> np.ndarray:
    """Decimal fields (checked by _fields_ok or the regular expression) as
    int64; those of 19 digits or more as 2**40, out of every range."""
    try:
        return np.array(column, dtype=np.int64)
    except OverflowError:
        return np.array([int(f) if len(f) < 19 else 1 << 40 for f in column], dtype=np.int64)


def _fields_ok(text: bytes, lines: int, want: int) -> bool:
    """Is every line of ``text`` ``want`` fields of the form ``-?[0-9]+`` (no
    sign on the first), each ended by a space but the last, ended by a CR?
    A dozen scans of the string in C, where the regular expression takes a
    few times longer; fields of more than 10 digits pass here and fail the
    caller's range checks (the lengths: max_body)."""
    if text.translate(None, b"0123456789-") != _SEPARATORS[want] * lines:
        return False  # a byte that is not a digit, '-' or a separator, or a line of another field count
    return not (b"  " in text or b" \r" in text or b"\r " in text or text[:1] in (b" ", b"-")  # an empty field
                or b"- " in text or b"-\r" in text or text.count(b"-") != text.count(b" -"))  # '-' alone or inside
