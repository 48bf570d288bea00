"""Byte layout of a ring: the header, the records, and the index arithmetic.

This module is the descriptor (Agrona's ``RingBufferDescriptor`` and
``RecordDescriptor``): every offset the ring code uses is defined here and
nowhere else.  All integers are little-endian (x86-64).

Segment = HEADER_BYTES of header, then ``capacity`` bytes of data
(capacity a power of two, data region page-aligned).

Header (4096 bytes; each group below starts on its own 128-byte pair of
cache lines so the producer and consumer never write the same line)::

    +--------+------+--------------------+-----------------------------------------------+
    | offset | type | field              | written by / meaning                          |
    +--------+------+--------------------+-----------------------------------------------+
    |      0 | u64  | magic              | creator; b"HPBRING1" once the header is valid |
    |      8 | u32  | version            | creator; LAYOUT_VERSION                       |
    |     12 | u32  | alignment          | creator; record alignment, 8 or 64            |
    |     16 | u64  | capacity           | creator; data bytes, power of two             |
    |     24 | u64  | generation         | creator; chosen by the broker per incarnation |
    |     32 | i64  | owner_pid          | creator (the process that unlinks it)         |
    |     40 | i64  | owner_start        | creator; /proc/<pid>/stat starttime (reuse)   |
    |     48 | i64  | owner_heartbeat    | creator; CLOCK_MONOTONIC ns, every beat       |
    |     56 | i64  | created_ns         | creator; CLOCK_REALTIME ns                    |
    |     64 | 64 B | doorbell           | creator; name of the data semaphore, ASCII    |
    +--------+------+--------------------+-----------------------------------------------+
    |    128 | i64  | tail               | producer; producer position (monotonic bytes) |
    |    136 | i64  | producer_pid       | producer; 0 = never attached                  |
    |    144 | i64  | producer_start     | producer; /proc starttime of producer_pid     |
    |    152 | i64  | producer_heartbeat | producer; CLOCK_MONOTONIC ns                  |
    |    160 | i64  | producer_state     | producer; 0 none, 1 attached, 2 closed        |
    |    168 | i64  | producer_waiting   | producer; 1 = asleep waiting for space        |
    +--------+------+--------------------+-----------------------------------------------+
    |    256 | i64  | head               | consumer; consumer position (monotonic bytes) |
    |    264 | i64  | consumer_pid       | consumer; 0 = never attached                  |
    |    272 | i64  | consumer_start     | consumer; /proc starttime of consumer_pid     |
    |    280 | i64  | consumer_heartbeat | consumer; CLOCK_MONOTONIC ns                  |
    |    288 | i64  | consumer_state     | consumer; 0 none, 1 attached, 2 closed        |
    |    296 | i64  | consumer_waiting   | consumer; 1 = asleep on the doorbell          |
    +--------+------+--------------------+-----------------------------------------------+
    |    384 |      | (reserved, zero)   | up to 4096                                    |
    +--------+------+--------------------+-----------------------------------------------+

Positions (``head``, ``tail``) are 64-bit byte counters that only grow; the
index into the data region is ``position & (capacity - 1)``.

Record (starts at an aligned index, never straddles the end of the data)::

    +--------+---------+---------------------------------------------------------+
    | offset | type    | field                                                   |
    +--------+---------+---------------------------------------------------------+
    |      0 | int32   | length: RECORD_HEADER_BYTES + payload bytes; 0 = not    |
    |        |         | yet published.  Written LAST, together with type_id, as |
    |        |         | one aligned 8-byte store (the "record word").           |
    |      4 | int32   | type_id: >= 0 for user records, -1 for padding          |
    |      8 | bytes   | payload                                                 |
    |   8+n  | bytes   | padding up to the next multiple of the alignment        |
    +--------+---------+---------------------------------------------------------+

A padding record (type -1) fills the space from its index to the end of
the data region when the next record does not fit there; its length is
that whole space (always a multiple of the alignment).

The code reads and writes the header and the data region as arrays of
8-byte little-endian words (``Ring.hq``, ``Ring.dq``): the word index of a
byte offset is ``offset >> WORD_SHIFT``, and a record word holds the length
in its low 32 bits and the type in its high 32 bits (``>> TYPE_SHIFT``).
"""

from __future__ import annotations

MAGIC = int.from_bytes(b"HPBRING1", "little")
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
CACHE_LINE = 64
MIN_CAPACITY = 4096
WORD_BYTES = 8  # the unit of Ring.hq / Ring.dq, and of every atomic store
WORD_SHIFT = 3  # word index = byte offset >> WORD_SHIFT
U32_MASK = 0xFFFF_FFFF

# -- header offsets (bytes) -----------------------------------------------------
MAGIC_OFF = 0
VERSION_OFF = 8  # u32
ALIGNMENT_OFF = 12  # u32, the high half of the version's word
ALIGNMENT_SHIFT = (ALIGNMENT_OFF - VERSION_OFF) * 8  # alignment = version word >> ALIGNMENT_SHIFT
CAPACITY_OFF = 16
GENERATION_OFF = 24
OWNER_PID_OFF = 32
OWNER_START_OFF = 40
OWNER_HEARTBEAT_OFF = 48
CREATED_NS_OFF = 56
DOORBELL_OFF = 64
DOORBELL_BYTES = 64

TAIL_OFF = 128
PRODUCER_PID_OFF = 136
PRODUCER_START_OFF = 144
PRODUCER_HEARTBEAT_OFF = 152
PRODUCER_STATE_OFF = 160
PRODUCER_WAITING_OFF = 168

HEAD_OFF = 256
CONSUMER_PID_OFF = 264
CONSUMER_START_OFF = 272
CONSUMER_HEARTBEAT_OFF = 280
CONSUMER_STATE_OFF = 288
CONSUMER_WAITING_OFF = 296

STATE_NONE, STATE_ATTACHED, STATE_CLOSED = 0, 1, 2

# -- records -------------------------------------------------------------------
RECORD_HEADER_BYTES = 8  # the record word; the payload starts this far into the record
LENGTH_OFF = 0  # int32, low half of the record word
TYPE_OFF = 4  # int32, high half of the record word
TYPE_SHIFT = TYPE_OFF * 8  # type_id = record word >> TYPE_SHIFT
PADDING_TYPE = -1
MAX_TYPE_ID = (1 << 31) - 2
ALIGNMENTS = (8, 64)

WORD_LENGTH_MASK = U32_MASK  # length = record word & WORD_LENGTH_MASK, as a uint32
INT32_SIGN = 0x8000_0000  # sign bit of a half: a length with it set is negative, never a record
PADDING_TYPE_U32 = PADDING_TYPE & U32_MASK  # record word >> TYPE_SHIFT of a padding record
PADDING_WORD_TYPE = PADDING_TYPE_U32 << TYPE_SHIFT


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def word(offset: int) -> int:
    """The index in ``Ring.hq``/``Ring.dq`` of the 8-byte word at byte ``offset``."""
    return offset >> WORD_SHIFT


def align(n: int, alignment: int) -> int:
    """Round ``n`` up to a multiple of ``alignment`` (a power of two)."""
    return (n + alignment - 1) & -alignment


def record_word(length: int, type_id: int) -> int:
    """The 8-byte record word (length low, type high) as an unsigned int."""
    return ((type_id & U32_MASK) << TYPE_SHIFT) | length


def word_length(word: int) -> int:
    """The signed int32 length of a record word (``<= 0`` means not published)."""
    n = word & WORD_LENGTH_MASK
    return n - (1 << 32) if n & INT32_SIGN else n


def word_type(word: int) -> int:
    t = word >> TYPE_SHIFT
    return t - (1 << 32) if t & INT32_SIGN else t


def max_record(capacity: int) -> int:
    """Largest aligned record (header + payload + pad) a ring of this capacity takes.

    One eighth of the capacity, as in Agrona: a full-size record then always
    fits in an empty ring even after a padding record.
    """
    return capacity >> 3


def max_payload(capacity: int) -> int:
    """Largest payload: ``max_record`` minus the record header (max_record is a
    multiple of both alignments for any capacity >= 512)."""
    return max_record(capacity) - RECORD_HEADER_BYTES


def plan(tail: int, record_bytes: int, capacity: int) -> tuple[int, int]:
    """Where a record of ``record_bytes`` (already aligned) goes.

    Returns ``(padding, position)``: ``padding`` bytes of padding record at
    ``tail`` (0 if the record fits before the end), then the record at
    ``position``.  The space needed is ``padding + record_bytes``.
    """
    index = tail & (capacity - 1)
    to_end = capacity - index
    if record_bytes <= to_end:
        return 0, tail
    return to_end, tail + to_end


def segment_bytes(capacity: int) -> int:
    return HEADER_BYTES + capacity
