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
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from crc32c import crc32c

from hpbroker import batch

MAX_FILTER_BYTES = 4096
MAX_DEPTH = 8
MAX_TERMS = 64
MAX_VALUES = 256
MAX_STRING = 256

TESTS = ("eq", "in", "prefix", "suffix", "exists")

#: more distinct needles than this in a filter's header tests, and a batch's
#: records are all decoded instead of searched for each needle: the search
#: costs a pass over the batch per needle, the decode one dict lookup per record
MAX_NEEDLES = 8

_decoder = msgspec.msgpack.Decoder()
_encoder = msgspec.msgpack.Encoder()


class FilterError(ValueError):
    """A filter that is not in the language, or over a limit; the message
    says which part (``filter.and[1].in[3]: ...``)."""


# -- the parsed tree ----------------------------------------------------------------------------


class _And:
    __slots__ = ("kids",)

    def __init__(self, kids):
        self.kids = kids


class _Or(_And):
    __slots__ = ()


class _Not:
    __slots__ = ("kid",)

    def __init__(self, kid):
        self.kid = kid


class _Test:
    """A test on one byte string: ``op`` and its argument (``values`` for
    eq/in/prefix/suffix, ``present`` for exists)."""

    __slots__ = ("op", "values", "present")

    def __init__(self, op: str, values: tuple[bytes, ...] = (), present: bool = True):
        self.op = op
        self.values = values
        self.present = present

    def passes(self, v: bytes) -> bool:
        op = self.op
        if op == "eq" or op == "in":
            return v in self.values
        if op == "prefix":
            return v.startswith(self.values[0])
        return v.endswith(self.values[0])  # suffix


class _Key:
    __slots__ = ("test",)

    def __init__(self, test: _Test):
        self.test = test


class _Header:
    __slots__ = ("name", "test", "slot", "needles", "default")

    def __init__(self, name: str, test: _Test, slot: int):
        self.name = name
        self.test = test
        self.slot = slot  # its bit in the per-record header mask
        # Byte strings one of which the headers bytes of every record this
        # test holds for contain verbatim (msgpack stores a str's UTF-8 and a
        # bin's bytes as they are): the value when it is not empty, else the
        # name.  A record whose headers contain none of them gets ``default``,
        # the test's answer for a record without that header.
        raw_name = name.encode("utf-8", "surrogatepass")
        if test.op == "exists":
            self.needles = (raw_name,)
        else:
            self.needles = tuple(dict.fromkeys(v or raw_name for v in test.values))
        self.default = test.op == "exists" and not test.present

    def holds(self, pairs) -> bool:
        t = self.test
        if t.op == "exists":
            return any(n == self.name for n, _ in pairs) == t.present
        return any(n == self.name and t.passes(v) for n, v in pairs)


class _Parser:
    def __init__(self):
        self.terms = 0
        self.values = 0
        self.headers: list[_Header] = []

    def node(self, obj: Any, path: str, depth: int):
        if depth > MAX_DEPTH:
            raise FilterError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"{path}: more than {MAX_TERMS} terms (and/or/not/key/header maps)")
        if not isinstance(obj, dict):
            raise FilterError(f"{path}: a filter is a map, got {_kind(obj)}")
        for k in obj:
            if not isinstance(k, str):
                raise FilterError(f"{path}: map keys are strings, got {_kind(k)}")
        if "header" in obj:
            return self.header(obj, path)
        if len(obj) != 1:
            raise FilterError(f"{path}: expected one of {{'and': [...]}}, {{'or': [...]}}, {{'not': ...}}, "
                              f"{{'key': {{test}}}} or {{'header': name, test}}, got keys {sorted(obj)}")
        (op, arg), = obj.items()
        if op in ("and", "or"):
            if not isinstance(arg, list) or not arg:
                raise FilterError(f"{path}.{op}: a non-empty list of filters, got {_kind(arg, empty=True)}")
            if len(arg) > MAX_TERMS:
                raise FilterError(f"{path}.{op}: more than {MAX_TERMS} terms")
            kids = [self.node(x, f"{path}.{op}[{i}]", depth + 1) for i, x in enumerate(arg)]
            return (_And if op == "and" else _Or)(kids)
        if op == "not":
            return _Not(self.node(arg, f"{path}.not", depth + 1))
        if op == "key":
            if not isinstance(arg, dict) or len(arg) != 1:
                raise FilterError(f"{path}.key: a map holding one test ({', '.join(TESTS)}), got "
                                  + (f"keys {sorted(map(str, arg))}" if isinstance(arg, dict) else _kind(arg)))
            (t, targ), = arg.items()
            return _Key(self.test(t, targ, f"{path}.key"))
        raise FilterError(f"{path}: unknown operator {op!r} (expected and, or, not, key or header)")

    def header(self, obj: dict, path: str) -> _Header:
        name = obj["header"]
        if not isinstance(name, str) or not name:
            raise FilterError(f"{path}.header: a header name is a non-empty string, got {_kind(name)}")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_STRING:
            raise FilterError(f"{path}.header: name longer than {MAX_STRING} bytes")
        rest = [k for k in obj if k != "header"]
        if len(rest) != 1:
            raise FilterError(f"{path}: a header filter holds its name and exactly one test "
                              f"({', '.join(TESTS)}), got {sorted(rest) or 'none'}")
        t = rest[0]
        h = _Header(name, self.test(t, obj[t], path), len(self.headers))
        self.headers.append(h)
        return h

    def test(self, op: Any, arg: Any, path: str) -> _Test:
        if op not in TESTS:
            raise FilterError(f"{path}: unknown test {op!r} (expected one of {', '.join(TESTS)})")
        path = f"{path}.{op}"
        if op == "exists":
            if not isinstance(arg, bool):
                raise FilterError(f"{path}: true or false, got {_kind(arg)}")
            return _Test(op, present=arg)
        if op == "in":
            if not isinstance(arg, list) or not arg:
                raise FilterError(f"{path}: a non-empty list of values, got {_kind(arg, empty=True)}")
            values = tuple(self.value(v, f"{path}[{i}]") for i, v in enumerate(arg))
            return _Test(op, tuple(dict.fromkeys(values)))
        return _Test(op, (self.value(arg, path),))

    def value(self, v: Any, path: str) -> bytes:
        self.values += 1
        if self.values > MAX_VALUES:
            raise FilterError(f"{path}: more than {MAX_VALUES} values in the filter")
        if isinstance(v, str):
            try:
                v = v.encode("utf-8")
            except UnicodeEncodeError:
                raise FilterError(f"{path}: not valid UTF-8") from None
        elif not isinstance(v, bytes):
            raise FilterError(f"{path}: a value is a string or bytes, got {_kind(v)}")
        if len(v) > MAX_STRING:
            raise FilterError(f"{path}: value longer than {MAX_STRING} bytes ({len(v)})")
        return v


def _kind(x: Any, empty: bool = False) -> str:
    if x is None:
        return "null"
    if empty and isinstance(x, list) and not x:
        return "an empty list"
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", bytes: "bytes",
            list: "a list", dict: "a map"}.get(type(x), type(x).__name__)


# -- the compiled filter ---------------------------------------------------------------------------


class Filter:
    """A parsed, checked filter.  :meth:`mask` says which records of one
    batch it matches; :func:`select` builds a reply from it."""

    __slots__ = ("spec", "_root", "_headers")

    def __init__(self, spec: Any):
        """``spec``: the filter as Python data (what msgpack decodes to: dicts,
        lists, str, bytes, bools).  Raises :class:`FilterError`."""
        p = _Parser()
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
        ev = _Eval(buf, table, starts)
        return ev.run(self._root, self._headers)


class _Eval:
    """One batch's evaluation: the record table, and what is computed lazily
    (the bytes as numpy, each record's header mask)."""

    def __init__(self, buf, table, starts):
        self.buf = buf
        self.table = table
        self.starts = starts
        self.n = len(table)
        self._u8 = None
        self._hmask = None

    def u8(self) -> np.ndarray:
        if self._u8 is None:
            self._u8 = np.frombuffer(self.buf, dtype=np.uint8)
        return self._u8

    def run(self, root, headers) -> np.ndarray:
        self.headers = headers
        return self.node(root)

    def node(self, nd) -> np.ndarray:
        cls = nd.__class__
        if cls is _Header:
            return ((self.header_mask() >> np.uint64(nd.slot)) & np.uint64(1)).astype(bool)
        if cls is _Key:
            return self.key(nd.test)
        if cls is _Not:
            return ~self.node(nd.kid)
        out = self.node(nd.kids[0])
        for k in nd.kids[1:]:
            if cls is _And:
                if not out.any():
                    return out
                out &= self.node(k)
            else:
                if out.all():
                    return out
                out |= self.node(k)
        return out

    # -- keys: numpy over the table and the key bytes -----------------------------------------

    def key(self, t: _Test) -> np.ndarray:
        klen = self.table["key_len"]
        if t.op == "exists":
            return klen >= 0 if t.present else klen < 0
        out = np.zeros(self.n, dtype=bool)
        if t.op in ("eq", "in"):
            by_len: dict[int, list[bytes]] = {}
            for v in t.values:
                by_len.setdefault(len(v), []).append(v)
            for size, vals in by_len.items():
                cand = np.flatnonzero(klen == size)
                if not len(cand):
                    continue
                if size == 0:
                    out[cand] = True
                    continue
                rows = self.gather(self.starts[cand], size)
                if len(vals) == 1:
                    hit = (rows == np.frombuffer(vals[0], dtype=np.uint8)).all(axis=1)
                else:
                    want = np.frombuffer(b"".join(vals), dtype=np.uint8).reshape(-1, size).view(f"V{size}").ravel()
                    hit = np.isin(rows.view(f"V{size}").ravel(), want)
                out[cand[hit]] = True
            return out
        v = t.values[0]
        size = len(v)
        cand = np.flatnonzero(klen >= size)
        if not len(cand) or size == 0:
            out[cand] = True
            return out
        at = self.starts[cand]
        if t.op == "suffix":
            at = at + klen[cand] - size
        hit = (self.gather(at, size) == np.frombuffer(v, dtype=np.uint8)).all(axis=1)
        out[cand[hit]] = True
        return out

    def gather(self, at: np.ndarray, size: int) -> np.ndarray:
        """``size`` bytes from each position in ``at``: a (len(at), size) array."""
        return self.u8()[at[:, None] + np.arange(size, dtype=np.int64)]

    # -- headers: found with numpy, decoded only where they may match ------------------------

    def header_mask(self) -> np.ndarray:
        """Per record, a uint64 whose bit ``slot`` says whether header leaf
        ``slot`` holds for it.

        The records a header test can hold for are found first, vectorised:
        their headers bytes contain one of the test's needles (the value,
        or the name).  Only those are decoded (once per distinct blob); the
        others get each test's default.  A batch without headers, or whose
        records all carry the same headers, is decided with one decode."""
        if self._hmask is not None:
            return self._hmask
        hlen = self.table["headers_len"]
        hstart = self.starts + np.maximum(self.table["key_len"], 0) + self.table["value_len"]
        n = self.n
        if not hlen.any():
            self._hmask = np.full(n, self._bits(b""), dtype=np.uint64)
            return self._hmask
        size = int(hlen[0])
        if (hlen == size).all():
            rows = self.gather(hstart, size)
            if (rows == rows[0]).all():  # every record carries the same headers: decode once
                self._hmask = np.full(n, self._bits(bytes(rows[0])), dtype=np.uint64)
                return self._hmask
        default = sum(1 << h.slot for h in self.headers if h.default)
        out = np.full(n, default, dtype=np.uint64)
        cand = self._candidates(hstart, hlen)
        mv = memoryview(self.buf)
        memo: dict[bytes, int] = {}
        for i, s, ln in zip(cand.tolist(), hstart[cand].tolist(), hlen[cand].tolist()):
            blob = mv[s:s + ln].tobytes()
            bits = memo.get(blob)
            if bits is None:
                bits = memo[blob] = self._bits(blob)
            out[i] = bits
        self._hmask = out
        return out

    def _candidates(self, hstart: np.ndarray, hlen: np.ndarray) -> np.ndarray:
        """The records (sorted indexes) whose headers bytes hold a needle of
        any header test; every record with headers when searching would cost
        more than decoding them all (many needles, or a needle everywhere)."""
        everyone = np.flatnonzero(hlen)
        needles = list(dict.fromkeys(nd for h in self.headers for nd in h.needles))
        if len(needles) > MAX_NEEDLES:
            return everyone
        lo = int(self.starts[0])
        hi = int(hstart[-1] + hlen[-1])
        region = self.u8()[lo:hi]
        hits = []
        for needle in needles:
            pos = _find_all(region, needle, limit=4 * self.n + 64)
            if pos is None:
                return everyone
            pos += lo
            rec = np.searchsorted(hstart, pos, side="right") - 1
            inside = pos + len(needle) <= hstart[rec] + hlen[rec]  # hstart[rec] <= pos by construction
            hits.append(rec[inside])
        return np.unique(np.concatenate(hits)) if hits else np.zeros(0, dtype=np.int64)

    def _bits(self, blob: bytes) -> int:
        try:
            pairs = batch.decode_headers(blob)
        except batch.CorruptBatch:
            pairs = []  # headers that are not the documented layout: as none
        bits = 0
        for h in self.headers:
            if h.holds(pairs):
                bits |= 1 << h.slot
        return bits


def _find_all(region: np.ndarray, needle: bytes, limit: int) -> np.ndarray | None:
    """Every position of ``needle`` in the uint8 array ``region``,
    overlapping ones too: one vectorised pass for the first byte, then each
    next byte checked at the positions still in the running.  None when
    more than ``limit`` positions are still in the running after four bytes
    (a needle made of bytes the data is full of): the cost would grow with
    the needle's length."""
    size = len(needle)
    room = len(region) - size + 1
    if room <= 0:
        return np.zeros(0, dtype=np.int64)
    want = np.frombuffer(needle, dtype=np.uint8)
    pos = np.flatnonzero(region[:room] == want[0])
    for j in range(1, size):
        if not len(pos):
            break
        if j == 4 and len(pos) > limit:
            return None
        pos = pos[region[pos + j] == want[j]]
    return pos


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
