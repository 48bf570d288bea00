"""The record batch: one byte format on the wire, in the rings and on disk.

A producer builds a batch, the acceptor checks it, the writer stamps two
fields and appends it, and a consumer receives the same bytes.  Nothing in
the broker walks the records of a batch one by one in Python: checks are a
CRC over the whole batch and a few numpy operations over the record table.

Batch header, 64 bytes, little-endian
-------------------------------------

=======  ====  =====================  =====================================
offset   size  field                  notes
=======  ====  =====================  =====================================
0        8     base_offset   int64    stamped by the broker's writer
8        4     batch_length  uint32   whole batch, header included
12       4     leader_epoch  int32    stamped by the broker's writer
16       1     magic         uint8    ``MAGIC`` (2)
17       3     reserved               zero
20       4     crc           uint32   CRC32C of bytes [24, batch_length)
24       2     attributes    uint16   bits 0-2 compression (0 = none, the
                                      only codec so far); bits 3-15 reserved,
                                      zero
26       2     reserved               zero
28       4     record_count  uint32   >= 1; offsets are base_offset + i
32       8     first_timestamp int64  ms since the epoch
40       8     max_timestamp int64    ms since the epoch
48       8     producer_id   int64    -1 when not idempotent
56       4     base_sequence int32    -1 when not idempotent
60       4     reserved               zero
=======  ====  =====================  =====================================

The CRC covers everything the producer wrote except the fields before it,
so the broker can stamp ``base_offset`` and ``leader_epoch`` without
recomputing it (as Kafka's v2 batches do).

Record table, ``record_count`` entries of 16 bytes, right after the header
----------------------------------------------------------------------------

=======  ====  ===============  ==========================================
offset   size  field            notes
=======  ====  ===============  ==========================================
0        4     timestamp_delta  int32 ms after ``first_timestamp``
4        4     key_length       int32, -1 for a null key
8        4     value_length     int32, >= 0
12       4     headers_length   int32, 0 for no headers
=======  ====  ===============  ==========================================

Record data, right after the table: for each record in order, its key
bytes, value bytes and headers bytes, with no separators or padding.

Record headers
--------------

``headers_length`` 0 means the record has no headers: no bytes at all, and
that is what a writer sends for an empty list too (never an empty array).
Otherwise the ``headers_length`` bytes are exactly one msgpack value:

* an array (fixarray, array 16 or array 32) of one or more pairs, in the
  order the producer gave them; names may repeat (as in Kafka);
* each pair an array of exactly two: the name, a msgpack str (fixstr, str 8,
  16 or 32) holding non-empty UTF-8; and the value, a msgpack bin (bin 8, 16
  or 32) of any length, 0 included;
* nothing after the array.

For example ``[("trace", b"\x01\x02")]`` is the 12 bytes
``91 92 a5 74 72 61 63 65 c4 02 01 02``: array of 1, array of 2, str of 5
``trace``, bin of 2.  :func:`encode_headers` and :func:`decode_headers`
convert; the broker never reads headers (it checks only that the table's
lengths add up), so a malformed blob is the reader's
:class:`CorruptBatch`.  A reader takes an empty array as no headers.

Keeping the lengths in one table instead of in front of each record is what
lets both ends stay vectorised: encoding is one ``bytes.join`` and one numpy
fill, decoding is one ``cumsum``.  docs/design.md records the choice.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import msgspec
import numpy as np
from crc32c import crc32c

MAGIC = 2
HEADER_SIZE = 64
ENTRY_SIZE = 16
CRC_START = 24

# Field offsets, named after the table above.
BASE_OFFSET_AT = 0
LENGTH_AT = 8
EPOCH_AT = 12
MAGIC_AT = 16
CRC_AT = 20
ATTRIBUTES_AT = 24
COUNT_AT = 28
FIRST_TS_AT = 32
MAX_TS_AT = 40

_HEADER = struct.Struct("<qIiB3xIHxxIqqqi4x")
assert _HEADER.size == HEADER_SIZE

ENTRY_DTYPE = np.dtype(
    [("ts_delta", "<i4"), ("key_len", "<i4"), ("value_len", "<i4"), ("headers_len", "<i4")]
)
assert ENTRY_DTYPE.itemsize == ENTRY_SIZE

_Q = struct.Struct("<q")
_I = struct.Struct("<I")
_i = struct.Struct("<i")


class CorruptBatch(ValueError):
    """A batch whose header, layout or CRC does not check out."""


class UnsupportedCompression(CorruptBatch):
    """A batch whose compression bits name a codec this side does not take."""


#: attributes bits 0-2: the compression codec
COMPRESSION_MASK = 0x0007
#: the codecs a producer may name; 0 is none (the records are stored as they are)
SUPPORTED_COMPRESSION = frozenset({0})
#: the reserved byte ranges of the header, [start, end), zero in every batch
RESERVED_RANGES = ((17, 20), (26, 28), (60, 64))


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    base_sequence: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: bytes | None


def read_header(buf, pos: int = 0) -> BatchHeader:
    """Decode the 64-byte header at ``pos`` (no checks beyond the size)."""
    return BatchHeader(*_HEADER.unpack_from(buf, pos))


def peek_length(buf, pos: int = 0) -> int:
    return _I.unpack_from(buf, pos + LENGTH_AT)[0]


def peek_base_offset(buf, pos: int = 0) -> int:
    return _Q.unpack_from(buf, pos + BASE_OFFSET_AT)[0]


def peek_epoch(buf, pos: int = 0) -> int:
    return _i.unpack_from(buf, pos + EPOCH_AT)[0]


def peek_count(buf, pos: int = 0) -> int:
    return _I.unpack_from(buf, pos + COUNT_AT)[0]


_PRODUCER = struct.Struct("<qi")  # producer_id (48), base_sequence (56)
PRODUCER_AT = 48


def peek_producer(buf, pos: int = 0) -> tuple[int, int]:
    """(producer_id, base_sequence) of the batch at ``pos``; (-1, -1) when not idempotent."""
    return _PRODUCER.unpack_from(buf, pos + PRODUCER_AT)


def set_producer(buf, producer_id: int, base_sequence: int, pos: int = 0) -> None:
    """Stamp an idempotent producer's id and first sequence into an encoded
    batch and recompute its CRC (both fields lie inside the CRC'd range)."""
    _PRODUCER.pack_into(buf, pos + PRODUCER_AT, producer_id, base_sequence)
    length = peek_length(buf, pos)
    _I.pack_into(buf, pos + 20, crc32c(memoryview(buf)[pos + CRC_START: pos + length]))


def stamp(buf, base_offset: int, leader_epoch: int, pos: int = 0) -> None:
    """Write the broker-owned fields in place; the CRC stays valid."""
    _Q.pack_into(buf, pos + BASE_OFFSET_AT, base_offset)
    _i.pack_into(buf, pos + EPOCH_AT, leader_epoch)


def compute_crc(buf, pos: int = 0, length: int | None = None) -> int:
    mv = memoryview(buf)
    if length is None:
        length = peek_length(mv, pos)
    return crc32c(mv[pos + CRC_START : pos + length])


def check_batch(buf, pos: int = 0, length: int | None = None, *, max_records: int = 1 << 24,
                table: bool = True) -> BatchHeader:
    """Check one batch and return its header; raise :class:`CorruptBatch`.

    ``length`` is the number of bytes available from ``pos``; when given, the
    batch must fill exactly that much (one frame = one batch).  The checks
    are per batch: header fields, the CRC, and that the record table's
    lengths add up to the data area (numpy, no Python loop per record).

    ``table=False`` skips the record table, for bytes whose table was checked
    where they entered the cluster: a slave receiving its master's log.  The
    CRC covers the table, so a match means these are the bytes the master's
    acceptor checked (as Kafka followers check a batch's CRC but do not
    validate its records again).  It is more than half the cost of a check.
    """
    mv = memoryview(buf)
    avail = len(mv) - pos if length is None else length
    if avail < HEADER_SIZE:
        raise CorruptBatch(f"batch shorter than its {HEADER_SIZE}-byte header ({avail} bytes)")
    h = read_header(mv, pos)
    if h.magic != MAGIC:
        raise CorruptBatch(f"bad magic {h.magic} (expected {MAGIC})")
    if h.batch_length < HEADER_SIZE or h.batch_length > avail:
        raise CorruptBatch(f"batch_length {h.batch_length} does not fit the {avail} bytes available")
    if length is not None and h.batch_length != length:
        raise CorruptBatch(f"batch_length {h.batch_length} but the frame holds {length} bytes")
    n = h.record_count
    if n < 1 or n > max_records or HEADER_SIZE + n * ENTRY_SIZE > h.batch_length:
        raise CorruptBatch(f"record_count {n} does not fit a {h.batch_length}-byte batch")
    crc = crc32c(mv[pos + CRC_START : pos + h.batch_length])
    if crc != h.crc:
        raise CorruptBatch(f"CRC32C mismatch: header says {h.crc:#010x}, bytes give {crc:#010x}")
    if not table:
        return h
    entries = record_table(mv, pos, n)
    keys = entries["key_len"]
    vals = entries["value_len"]
    hdrs = entries["headers_len"]
    if keys.min() < -1 or vals.min() < 0 or hdrs.min() < 0:
        raise CorruptBatch("negative length in the record table")
    data = int(np.maximum(keys, 0).sum(dtype=np.int64) + vals.sum(dtype=np.int64) + hdrs.sum(dtype=np.int64))
    if HEADER_SIZE + n * ENTRY_SIZE + data != h.batch_length:
        raise CorruptBatch("record table lengths do not add up to the batch length")
    return h


def check_producer_fields(buf, pos: int = 0, header: BatchHeader | None = None) -> None:
    """The header fields a producer must leave for later versions: the
    compression bits name a codec this broker takes, and the reserved bits
    and bytes are zero.  Raises :class:`UnsupportedCompression` or
    :class:`CorruptBatch`.  For batches entering the cluster (the acceptor's
    produce path), after :func:`check_batch`; never for bytes already stored,
    which were checked when they came in."""
    h = header or read_header(buf, pos)
    codec = h.attributes & COMPRESSION_MASK
    if codec not in SUPPORTED_COMPRESSION:
        raise UnsupportedCompression(f"compression codec {codec} (attributes bits 0-2) is not supported; "
                                     "send uncompressed batches (codec 0)")
    if h.attributes & ~COMPRESSION_MASK:
        raise CorruptBatch(f"reserved attributes bits are set ({h.attributes:#06x}); bits 3-15 must be zero")
    mv = memoryview(buf)
    for start, end in RESERVED_RANGES:
        if any(mv[pos + start : pos + end]):
            raise CorruptBatch(f"reserved header bytes {start}..{end - 1} are not zero")


_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes]])
_BYTES_LIKE = (bytes, bytearray, memoryview)


def encode_headers(pairs) -> bytes | None:
    """The headers bytes of one record (see "Record headers" above) from a
    list of ``(name, value)`` pairs: ``name`` a non-empty str, ``value``
    bytes (a bytearray or memoryview is copied).  None or an empty list give
    None, which :func:`encode_batch` stores as ``headers_length`` 0.

    Raises TypeError for a wrong type and ValueError for an empty or
    non-UTF-8 name, naming the header, so a producer can call it in the
    caller's thread before anything is queued."""
    if pairs is None:
        return None
    if not isinstance(pairs, (list, tuple)):
        raise TypeError(f"headers must be a list of (name, value) pairs, got {type(pairs).__name__}")
    if not pairs:
        return None
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError(f"header {i} must be a (name, value) pair, got {_describe(pair)}")
        name, value = pair
        if name.__class__ is not str:
            if not isinstance(name, str):
                raise TypeError(f"header {i}: name must be str, got {type(name).__name__}")
            name = str(name)
        if not name:
            raise ValueError(f"header {i}: name must not be empty")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"header {i}: name {name!r} is not valid UTF-8 ({e.reason})") from None
        if value.__class__ is not bytes:
            if not isinstance(value, _BYTES_LIKE):
                raise TypeError(f"header {name!r}: value must be bytes, got {type(value).__name__}")
            value = bytes(value)
        out.append((name, value))
    return _headers_encoder.encode(out)


def decode_headers(blob) -> list[tuple[str, bytes]]:
    """The ``(name, value)`` pairs of one record's headers bytes, in order
    (``Record.headers``; None or empty give ``[]``).  Raises
    :class:`CorruptBatch` when the bytes are not the layout of "Record
    headers" above."""
    if not blob:
        return []
    try:
        pairs = _headers_decoder.decode(blob)
    except msgspec.DecodeError as e:
        raise CorruptBatch(f"record headers ({len(blob)} bytes) are not a msgpack array of "
                           f"[str, bin] pairs: {e}") from None
    for name, _ in pairs:
        if not name:
            raise CorruptBatch("record headers: a header name is empty")
    return pairs


def check_headers(buf, pos: int = 0, header: BatchHeader | None = None) -> None:
    """Every record's headers decode (``decode_headers``); raises
    CorruptBatch naming the record.  For batches entering the cluster: a
    consumer must never meet headers it cannot read.  Costs one table scan
    for a batch without headers, one msgpack decode per record with them."""
    h = header or read_header(buf, pos)
    table, starts = value_bounds(buf, pos, h)
    hlen = table["headers_len"]
    if not hlen.any():
        return
    mv = memoryview(buf)
    hstart = starts + np.maximum(table["key_len"], 0) + table["value_len"]
    for i in np.flatnonzero(hlen).tolist():
        s = int(hstart[i])
        try:
            decode_headers(mv[s:s + int(hlen[i])])
        except CorruptBatch as e:
            raise CorruptBatch(f"record {i}: {e}") from None


def _describe(v) -> str:
    return f"a {type(v).__name__} of {len(v)}" if isinstance(v, (list, tuple)) else type(v).__name__


def record_table(buf, pos: int, count: int) -> np.ndarray:
    return np.frombuffer(buf, dtype=ENTRY_DTYPE, count=count, offset=pos + HEADER_SIZE)


_BLANK_HEADER = bytes(HEADER_SIZE)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_batch(
    values: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    *,
    timestamp_ms: int | None = None,
    timestamps_ms: Sequence[int] | np.ndarray | None = None,
    headers: Sequence[bytes | None] | None = None,
    producer_id: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
    value_lengths: np.ndarray | None = None,
) -> bytearray:
    """Build one batch from a list of values (and optionally keys, per-record
    timestamps and pre-encoded header blobs).  ``value_lengths`` may carry
    ``len()`` of every value when the caller already has them.

    The cost is a handful of C-level passes over the list (``len`` map,
    ``bytes.join``) and numpy fills; there is no Python statement per record.
    """
    n = len(values)
    if n == 0:
        raise ValueError("a batch needs at least one record")
    table = np.zeros(n, dtype=ENTRY_DTYPE)
    table["value_len"] = np.fromiter(map(len, values), dtype=np.int64, count=n) if value_lengths is None else value_lengths
    parts: Iterable[bytes]
    if keys is None and headers is None:
        table["key_len"] = -1
        parts = values
    else:
        ks = keys if keys is not None else (None,) * n
        hs = headers if headers is not None else (None,) * n
        if len(ks) != n or len(hs) != n:
            raise ValueError("keys and headers must be as long as values")
        table["key_len"] = np.fromiter((-1 if k is None else len(k) for k in ks), dtype=np.int64, count=n)
        table["headers_len"] = np.fromiter((0 if h is None else len(h) for h in hs), dtype=np.int64, count=n)
        parts = _interleave(ks, values, hs)
    if timestamps_ms is not None:
        ts = np.asarray(timestamps_ms, dtype=np.int64)
        if ts.shape != (n,):
            raise ValueError("timestamps_ms must be as long as values")
        first = int(ts.min())
        last = int(ts.max())
        table["ts_delta"] = ts - first
    else:
        first = last = now_ms() if timestamp_ms is None else int(timestamp_ms)
    # One copy of the values: bytearray.join writes header room, table and
    # values straight into the (mutable) result.
    if not isinstance(parts, list):
        parts = list(parts)
    out = bytearray().join([_BLANK_HEADER, table.tobytes(), *parts])
    total = len(out)
    if total > 0xFFFFFFFF:
        raise ValueError("batch larger than 4 GiB")
    _HEADER.pack_into(out, 0, 0, total, 0, MAGIC, 0, attributes, n, first, last, producer_id, base_sequence)
    _I.pack_into(out, CRC_AT, crc32c(memoryview(out)[CRC_START:]))
    return out


def _interleave(keys, values, headers) -> Iterator[bytes]:
    empty = b""
    for k, v, h in zip(keys, values, headers):
        yield empty if k is None else k
        yield v
        yield empty if h is None else h


def value_bounds(buf, pos: int = 0, header: BatchHeader | None = None):
    """Return (table, starts) where ``starts[i]`` is the absolute position of
    record i's key (its value follows ``max(key_len, 0)`` bytes later)."""
    h = header or read_header(buf, pos)
    table = record_table(buf, pos, h.record_count)
    sizes = np.maximum(table["key_len"], 0).astype(np.int64) + table["value_len"] + table["headers_len"]
    starts = np.empty(h.record_count, dtype=np.int64)
    starts[0] = 0
    np.cumsum(sizes[:-1], out=starts[1:])
    starts += pos + HEADER_SIZE + h.record_count * ENTRY_SIZE
    return table, starts


def values_of(buf, pos: int = 0) -> list[bytes]:
    """All values of the batch at ``pos``, as a list of bytes."""
    mv = memoryview(buf)
    table, starts = value_bounds(mv, pos)
    vstart = starts + np.maximum(table["key_len"], 0)
    vend = vstart + table["value_len"]
    return [mv[s:e].tobytes() for s, e in zip(vstart.tolist(), vend.tolist())]


def records_of(buf, pos: int = 0) -> list[Record]:
    """Decode the batch at ``pos`` into :class:`Record` objects (consumer side)."""
    mv = memoryview(buf)
    h = read_header(mv, pos)
    table, starts = value_bounds(mv, pos, h)
    klen = table["key_len"].tolist()
    vlen = table["value_len"].tolist()
    hlen = table["headers_len"].tolist()
    tsd = table["ts_delta"].tolist()
    out = []
    base = h.base_offset
    first = h.first_timestamp
    for i, s in enumerate(starts.tolist()):
        k = klen[i]
        if k < 0:
            key = None
            vs = s
        else:
            key = mv[s : s + k].tobytes()
            vs = s + k
        ve = vs + vlen[i]
        hd = mv[ve : ve + hlen[i]].tobytes() if hlen[i] else None
        out.append(Record(base + i, first + tsd[i], key, mv[vs:ve].tobytes(), hd))
    return out


def iter_batches(buf, start: int = 0, end: int | None = None) -> Iterator[tuple[int, BatchHeader]]:
    """Walk whole batches laid end to end in ``buf[start:end]`` (headers only,
    no CRC check).  Stops at the first incomplete batch."""
    mv = memoryview(buf)
    end = len(mv) if end is None else end
    pos = start
    while pos + HEADER_SIZE <= end:
        h = read_header(mv, pos)
        if h.batch_length < HEADER_SIZE or pos + h.batch_length > end:
            return
        yield pos, h
        pos += h.batch_length
