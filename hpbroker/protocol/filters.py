"""Server-side fetch filters: data, never code (docs/protocol.md, "Filters").

A consumer may send a filter with a Fetch; the broker then replies with only
the records it matches, so the others never cross the network (MetaQ's
per-group consumer filters, RocketMQ's tags).  A filter is a msgpack map in
the Fetch's ``filter`` field, in this small language:

    filter = {"and": [filter, ...]}          every one matches (1 or more)
           | {"or": [filter, ...]}           at least one matches
           | {"not": filter}
           | {"key": test}                   the record's key
           | {"header": NAME, <test>}        the record's headers named NAME
    test   = {"eq": V} | {"in": [V, ...]} | {"prefix": V} | {"suffix": V}
           | {"exists": true | false}

``V`` is a msgpack str (compared as its UTF-8 bytes) or bin.  A header leaf
holds its name and one test in the same map (``{"header": "tag", "in": ["a",
"b"]}``); a key leaf holds one test in a map of its own (``{"key": {"prefix":
"user-"}}``).  A header test matches when *any* header of that name passes it
(names may repeat); ``exists: false`` matches a record with no header of that
name.  A null key fails every key test except ``exists: false``; an empty key
is not null.  There is no regex, no arithmetic, nothing that loops: each
test is a byte comparison, so a filter's cost per record is bounded by its
size.

Limits (checked before anything is evaluated; a filter over any of them is
refused with ``BAD_REQUEST`` and a message naming the part):
``MAX_FILTER_BYTES`` of msgpack, ``MAX_DEPTH`` levels, ``MAX_TERMS`` maps
(``and``, ``or``, ``not`` and leaves), ``MAX_VALUES`` values in all tests
together, ``MAX_STRING`` bytes in a name or a value.

Evaluation is per batch and vectorised: key tests are numpy comparisons over
the record table and a gather of the key bytes (no Python per record).
Header tests must decode msgpack, so they first find, with numpy over the
batch's bytes, the records whose headers contain the test's value (or, for
an empty value or ``exists``, its name) verbatim, as every match must, and
decode only those (once per distinct blob); a batch without headers, or
whose records all carry the same headers, takes one decode.  A 1 % tag
filter thus decodes about 1 % of the records.  :func:`select` builds the
reply: the matching records of each batch, as one batch per run of
consecutive matches (offsets kept, :func:`hpbroker.batch.sub_batch`), or the
batch's own bytes when every record matches.

The parts, by job: :mod:`~hpbroker.protocol.filter_tree` (the parsed tree,
the parser and the limits), :mod:`~hpbroker.protocol.filter_eval` (one
batch's vectorised evaluation), and this module (:class:`Filter`, the
public face, and :func:`select`, the reply).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from crc32c import crc32c

from hpbroker import batch
from hpbroker.protocol.filter_eval import BatchEval
from hpbroker.protocol.filter_tree import (MAX_DEPTH, MAX_FILTER_BYTES, MAX_STRING, MAX_TERMS, MAX_VALUES,
                                           FilterError, Parser)

__all__ = ["Filter", "FilterError", "select", "from_fetch", "MAX_FILTER_BYTES", "MAX_DEPTH", "MAX_TERMS",
           "MAX_VALUES", "MAX_STRING"]

_decoder = msgspec.msgpack.Decoder()
_encoder = msgspec.msgpack.Encoder()


class Filter:
    """A parsed, checked filter.  :meth:`mask` says which records of one
    batch it matches; :func:`select` builds a reply from it."""

    __slots__ = ("spec", "_root", "_headers")

    def __init__(self, spec: Any):
        """``spec``: the filter as Python data (what msgpack decodes to: dicts,
        lists, str, bytes, bools).  Raises :class:`FilterError`."""
        p = Parser()
        self._root = p.node(spec, "filter", 1)
        self._headers = p.headers
        self.spec = spec
        n = len(self.encode())
        if n > MAX_FILTER_BYTES:  # (what decode() checks first, for one built here)
            raise FilterError(f"filter is {n} bytes of msgpack, more than {MAX_FILTER_BYTES}")

    @classmethod
    def decode(cls, raw) -> "Filter":
        """Parse the msgpack bytes of a filter (a Fetch's ``filter`` field).
        Raises :class:`FilterError`, over :data:`MAX_FILTER_BYTES` before
        anything is decoded."""
        n = len(memoryview(raw))
        if n > MAX_FILTER_BYTES:
            raise FilterError(f"filter is {n} bytes of msgpack, more than {MAX_FILTER_BYTES}")
        try:
            spec = _decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as e:
            raise FilterError(f"filter is not valid msgpack: {e}") from None
        return cls(spec)

    def encode(self) -> bytes:
        """The filter's msgpack, as a Fetch's ``filter`` field carries it."""
        return _encoder.encode(self.spec)

    def __repr__(self) -> str:
        return f"Filter({self.spec!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Filter) and self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.encode())

    # -- building filters in Python (each checks itself as it is made) ------------------------

    @classmethod
    def of(cls, f: "Filter | dict") -> "Filter":
        """``f`` itself, or the filter the dict ``f`` spells."""
        return f if isinstance(f, Filter) else cls(f)

    @classmethod
    def header_in(cls, name: str, values) -> "Filter":
        """Records with a header ``name`` whose value is one of ``values`` (a tag set)."""
        return cls({"header": name, "in": list(values)})

    @classmethod
    def header_eq(cls, name: str, value) -> "Filter":
        return cls({"header": name, "eq": value})

    @classmethod
    def header_prefix(cls, name: str, value) -> "Filter":
        return cls({"header": name, "prefix": value})

    @classmethod
    def header_suffix(cls, name: str, value) -> "Filter":
        return cls({"header": name, "suffix": value})

    @classmethod
    def header_exists(cls, name: str, present: bool = True) -> "Filter":
        return cls({"header": name, "exists": bool(present)})

    @classmethod
    def key_in(cls, values) -> "Filter":
        return cls({"key": {"in": list(values)}})

    @classmethod
    def key_eq(cls, value) -> "Filter":
        return cls({"key": {"eq": value}})

    @classmethod
    def key_prefix(cls, value) -> "Filter":
        return cls({"key": {"prefix": value}})

    @classmethod
    def key_suffix(cls, value) -> "Filter":
        return cls({"key": {"suffix": value}})

    @classmethod
    def key_exists(cls, present: bool = True) -> "Filter":
        """Records with a key (``present=False``: with a null key)."""
        return cls({"key": {"exists": bool(present)}})

    @classmethod
    def all_of(cls, *fs: "Filter | dict") -> "Filter":
        return cls({"and": [cls.of(f).spec for f in fs]})

    @classmethod
    def any_of(cls, *fs: "Filter | dict") -> "Filter":
        return cls({"or": [cls.of(f).spec for f in fs]})

    def __and__(self, other: "Filter | dict") -> "Filter":
        return Filter.all_of(self, other)

    def __or__(self, other: "Filter | dict") -> "Filter":
        return Filter.any_of(self, other)

    def __invert__(self) -> "Filter":
        return Filter({"not": self.spec})

    def mask(self, buf, pos: int = 0, header: batch.BatchHeader | None = None, bounds=None) -> np.ndarray:
        """A bool per record of the batch at ``pos``: does the filter match
        it?  ``bounds``: :func:`hpbroker.batch.value_bounds` when the caller
        has it.  The batch is not checked (its table was, when it was
        produced)."""
        h = header or batch.read_header(buf, pos)
        table, starts = bounds if bounds is not None else batch.value_bounds(buf, pos, h)
        ev = BatchEval(buf, table, starts)
        return ev.run(self._root, self._headers)


# -- building a reply ----------------------------------------------------------------------------


def select(data, flt: Filter, min_offset: int, room: int, at_least_one: bool = True, verify: bool = True):
    """The records of ``data`` (whole batches laid end to end) that ``flt``
    matches, at or past ``min_offset``, as reply batches.

    ``verify``: check each batch's CRC32C before its record table is read.
    A batch cut into runs gets a new CRC, so without this check a batch
    damaged at rest would leave here with a valid CRC over its damaged bytes
    and no consumer could tell.  A bad batch first in ``data`` raises
    :class:`hpbroker.batch.CorruptBatch` naming its offsets; one after
    others stops the selection there (``stopped``, ``next_offset`` its
    base), so what came before it is delivered and the next read raises
    (docs/reliability.md, "Who checks a stored batch").

    Returns ``(pieces, nbytes, next_offset, stopped)``: the batches (a
    batch every record of which matches is passed on as it is; otherwise one
    new batch per run of consecutive matching records, offsets kept),
    their total size, the offset a next fetch starts from, and whether the
    pieces stopped short of ``data``'s end because the next would take the
    total over ``room`` (at least one piece is taken when ``at_least_one``).
    ``next_offset`` is past every record looked at: those the filter dropped
    are never looked at again."""
    mv = memoryview(data)
    pieces: list = []
    nbytes = 0
    next_offset = -1
    for pos, h in batch.iter_batches(mv):
        base, n = h.base_offset, h.record_count
        if base + n <= min_offset:
            next_offset = base + n
            continue
        if verify:
            try:
                _verify(mv, pos, h)
            except batch.CorruptBatch:
                if next_offset < 0:
                    raise
                return pieces, nbytes, base, True  # what came before it; the next read starts at it and raises
        bounds = batch.value_bounds(mv, pos, h)
        keep = flt.mask(mv, pos, h, bounds)
        if base < min_offset:
            keep[: min_offset - base] = False
        if keep.all():
            runs = [(0, n)]
        elif not keep.any():
            runs = []
        else:
            k = keep.view(np.int8)
            step = np.empty(n + 1, dtype=np.int8)  # np.diff(prepend=, append=) costs more than the rest of this
            step[0] = k[0]
            np.subtract(k[1:], k[:-1], out=step[1:n])
            step[n] = -k[-1]
            edges = np.flatnonzero(step)
            runs = list(zip(edges[0::2].tolist(), edges[1::2].tolist()))
        for a, b in runs:
            if a == 0 and b == n:
                piece = mv[pos:pos + h.batch_length]
            else:
                piece = batch.sub_batch(mv, pos, h, bounds[0], bounds[1], a, b)
            if nbytes + len(piece) > room and (nbytes or not at_least_one):
                return pieces, nbytes, base + a, True
            pieces.append(piece)
            nbytes += len(piece)
        next_offset = base + n
    return pieces, nbytes, next_offset, False


def _verify(mv, pos: int, h) -> None:
    n = h.record_count
    if h.magic != batch.MAGIC or n < 1 or batch.HEADER_SIZE + n * batch.ENTRY_SIZE > h.batch_length:
        raise batch.CorruptBatch(f"the stored batch at offset {h.base_offset} has magic {h.magic}, record_count {n} "
                                 f"and batch_length {h.batch_length}, which do not fit")
    got = crc32c(mv[pos + batch.CRC_START:pos + h.batch_length])
    if got != h.crc:
        raise batch.CorruptBatch(f"the stored batch of offsets {h.base_offset}..{h.base_offset + n - 1} fails its "
                                 f"CRC32C check (header {h.crc:#010x}, bytes {got:#010x})")


def from_fetch(raw) -> Filter | None:
    """The filter of a Fetch's ``filter`` field (a ``msgspec.Raw``), None
    when it is unset or null.  Raises :class:`FilterError`."""
    if raw is msgspec.UNSET:
        return None
    mv = memoryview(raw)
    if len(mv) == 1 and mv[0] == 0xC0:  # nil
        return None
    return Filter.decode(mv)
