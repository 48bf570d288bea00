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
   candidates gathered into one string, ``fields\\r`` per line, checked in
   one regular-expression match (the valid prefix counts);
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
    within ``buf[:n]``: (body starts, body ends, fields), each put's fields
    ``want`` consecutive items of ``fields`` (bytes, as sent); or None when
    the caller should read it with its loop (too many candidates)."""
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
        return ((), (), ())
    # every line's fields and its CR, in one string
    starts = cand + hl
    lens = ends + 1 - starts
    at = lens.cumsum()
    idx = np.arange(int(at[-1]), dtype=np.int64)
    idx += (starts - (at - lens)).repeat(lens)
    text = a[idx].tobytes()
    m = _FIELDS[want].match(text)
    if m is None:
        return ((), (), ())
    good = text.count(b"\r", 0, m.end())
    fields = text[:m.end()].split()
    lengths = np.array(fields[0::want], dtype=np.int64) if good else np.zeros(0, np.int64)
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
    return bstart[:count], bend[:count], fields[:count * want]
