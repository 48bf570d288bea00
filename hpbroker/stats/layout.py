"""Byte layout of the stats block: a header, then one slot per broker process.

One POSIX shared-memory segment per broker, ``/hpb.<instance>.stats.v1``,
created by the supervisor before it starts any child and unlinked when it
stops.  Every slot has exactly one writer (the process it is named after),
so no field ever needs a lock or an atomic read-modify-write; readers (the
HTTP process) map the whole block and read it without taking anything.

Header (``HEADER_BYTES``, a multiple of 4096)::

    offset  size       field
    ------  ---------  --------------------------------------------------
    0       8          magic b"HPBSTATS"
    8       4  u32     layout version (VERSION)
    12      4  u32     slots
    16      4  u32     partition rows per slot
    20      4  u32     words (int64) per slot
    24      8  i64     owner pid (the supervisor)
    32      8  i64     owner start time (clock ticks since boot, /proc)
    40      8  i64     created, ns since the Unix epoch
    48      16         reserved
    64      32*slots   slot names, ASCII, NUL-padded ("acceptor0", ...)

Slot ``i`` starts at ``HEADER_BYTES + i * words_per_slot * 8``; every field
is a little-endian int64 word::

    word            field
    --------------  ------------------------------------------------------
    0               pid (written by the supervisor when it spawns the child)
    1               kind (KINDS index)
    2               heartbeat, ns since the Unix epoch
    3               started, ns since the Unix epoch
    4..7            reserved
    COUNTERS_AT     one word per name in COUNTERS
    GAUGES_AT       one word per name in GAUGES
    REQUESTS_AT     REQUEST_KINDS x CODE_SLOTS counters: replies by kind and
                    error code (code c at c, codes >= 63 at 63)
    HISTOGRAMS_AT   per HISTOGRAMS entry: len(bounds) + 1 bucket counts
                    (not cumulative; the last is +Inf), then sum, then count
    LOG_AT          log tail: 1 word sequence number (lines written), then
                    LOG_LINES lines of LOG_LINE_BYTES: 8 bytes time (ns since
                    the epoch), 1 byte level/10, 247 bytes UTF-8 text, NUL-padded
    ROWS_AT         ``rows`` partition rows of ROW_WORDS words (ROW_FIELDS);
                    a row is free while its key (word 0) is 0

Histogram sums are integers in the histogram's unit (``scale`` per second
or per byte: microseconds for latencies, bytes for sizes).  A row's key is
:func:`partition_key` of (topic, partition); rows are taken in order and
never given back, and a row's other words are still zero when its key is
stored, so a reader never sees a key with another partition's numbers.  The words of a row are not one snapshot: each is
read as stored at that moment (x86-64 stores and loads aligned 8-byte words
whole, which the ring relies on too).
"""

from __future__ import annotations

import hashlib
import struct

MAGIC = b"HPBSTATS"
VERSION = 1
HEADER = struct.Struct("<8sIIIIqqq16x")  # 64 bytes
NAME_BYTES = 32
PAGE = 4096
SLOT_HEAD_WORDS = 8

KINDS = ("?", "supervisor", "http", "acceptor", "writer", "replicator")

#: monotonic counters, one word each (the slot's process adds to its own)
COUNTERS = (
    "produce_request_bytes",  # acceptor: payload bytes of produce requests handed to a writer
    "fetch_bytes",  # acceptor: bytes of fetch replies
    "fetch_messages",  # acceptor: offsets fetch replies advanced over
    "busy_dropped",  # acceptor: acks=0 requests dropped with BUSY (no reply to count)
    "rows_full",  # partitions this process could not give a row (stats.rows too small)
    "rounds",  # writer: group-commit rounds started
    "appended_bytes",  # writer: batch bytes appended
    "http_requests",  # http: requests served
    "http_produced_messages",  # http: messages acknowledged through the gateway
    "http_fetched_messages",  # http: messages returned through the gateway
    "http_rate_limited",  # http: requests refused by the rate limit
)
#: values that go up and down, one word each
GAUGES = (
    "pending_requests",  # acceptor: produce requests waiting for their writer
    "parked_fetch_partitions",  # acceptor: partitions with long polls waiting for data
)

REQUEST_KINDS = ("produce", "fetch", "other")
CODE_SLOTS = 64


class Histogram:
    __slots__ = ("name", "bounds", "scale", "unit_bounds", "width")

    def __init__(self, name: str, bounds: tuple[float, ...], scale: int):
        self.name = name
        self.bounds = bounds  # upper bounds in the metric's unit (seconds, bytes, batches)
        self.scale = scale  # stored integer units per metric unit
        self.unit_bounds = [round(b * scale) for b in bounds]
        self.width = len(bounds) + 3  # buckets incl. +Inf, sum, count


_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HISTOGRAMS = (
    Histogram("produce_ack_latency_seconds", _LATENCY, 1_000_000),  # acceptor: request in -> ack out
    Histogram("group_commit_batches", tuple(float(1 << i) for i in range(13)), 1),  # writer: batches per round
    Histogram("group_commit_bytes", tuple(float(4096 << (2 * i)) for i in range(8)), 1),  # writer: bytes per round
    Histogram("fdatasync_seconds", _LATENCY, 1_000_000),  # writer: one fdatasync call
    Histogram("http_request_seconds", _LATENCY, 1_000_000),  # http: gateway request in -> response
)
HISTOGRAM_INDEX = {h.name: i for i, h in enumerate(HISTOGRAMS)}

LOG_LINES = 64
LOG_LINE_BYTES = 256
LOG_TEXT_BYTES = LOG_LINE_BYTES - 9

ROW_FIELDS = ("key", "messages_in", "bytes_in", "messages_out", "bytes_out", "log_start", "log_end", "size_bytes")
ROW_WORDS = len(ROW_FIELDS)
ROW = {name: i for i, name in enumerate(ROW_FIELDS)}

COUNTER = {name: SLOT_HEAD_WORDS + i for i, name in enumerate(COUNTERS)}
COUNTERS_AT = SLOT_HEAD_WORDS
GAUGES_AT = COUNTERS_AT + len(COUNTERS)
GAUGE = {name: GAUGES_AT + i for i, name in enumerate(GAUGES)}
REQUESTS_AT = GAUGES_AT + len(GAUGES)
HISTOGRAMS_AT = REQUESTS_AT + len(REQUEST_KINDS) * CODE_SLOTS
HISTOGRAM_AT = []
_at = HISTOGRAMS_AT
for _h in HISTOGRAMS:
    HISTOGRAM_AT.append(_at)
    _at += _h.width
LOG_AT = _at
ROWS_AT = LOG_AT + 1 + LOG_LINES * LOG_LINE_BYTES // 8
del _at, _h


def code_slot(code: int) -> int:
    return code if 0 <= code < CODE_SLOTS - 1 else CODE_SLOTS - 1


def words_per_slot(rows: int) -> int:
    return ROWS_AT + rows * ROW_WORDS


def header_bytes(slots: int) -> int:
    n = HEADER.size + NAME_BYTES * slots
    return (n + PAGE - 1) // PAGE * PAGE


def block_bytes(slots: int, rows: int) -> int:
    return header_bytes(slots) + slots * words_per_slot(rows) * 8


def slot_names(acceptors: int, writers: int, replicated: bool) -> list[str]:
    """The slots of a broker, in block order."""
    return ["supervisor", "http", *(f"acceptor{a}" for a in range(acceptors)), *(f"writer{w}" for w in range(writers)),
            *(["replicator"] if replicated else [])]


def kind_of(name: str) -> int:
    base = name.rstrip("0123456789")
    return KINDS.index(base) if base in KINDS else 0


def partition_key(topic: str, partition: int) -> int:
    """A non-zero int64 naming (topic, partition) in a row: the first 8
    bytes of its BLAKE2b.  Readers map keys back through the topic list."""
    d = hashlib.blake2b(f"{topic}\0{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little", signed=True) or 1
