"""The ring over a buffer: numpy/memoryview views of the header and the data region.

:class:`Ring` owns no memory and no process: it takes any writable buffer
(a ``bytearray`` in tests, an ``mmap`` of POSIX shared memory in the
broker), lays the header out or validates it, and hands out one
:class:`~hpbroker.ring.writer.Writer` and one
:class:`~hpbroker.ring.reader.Reader` (single producer, single consumer).

Publication protocol (Aeron/Agrona) and the memory-ordering assumption
---------------------------------------------------------------------
* The writer copies the payload into place first and then stores the
  8-byte record word (length | type << 32) with ONE aligned 8-byte store
  (``memoryview.cast('Q')[i] = word``, which CPython compiles to a single
  ``mov``; the numpy views address the same bytes).
* A reader reads the record word first and consumes the record only if its
  length is positive; then it reads the payload.
* This relies on x86-64 TSO: stores become visible to other cores in
  program order and loads are not reordered with older loads, so a reader
  that sees the word also sees the payload written before it.  Large
  copies may use non-temporal stores inside ``memcpy``; glibc ends those
  with ``sfence``, so they too are visible before the record word.  On a
  weakly ordered CPU (ARM, POWER) this code would need release/acquire
  fences it does not have.  The cross-process stress tests exercise it.
* Stale words: the reader zeroes the record word of every record (and
  padding record) it consumes *before* it advances ``head``; the writer
  zeroes the word just after the record(s) it publishes (when that word is
  free space) *before* storing the record word.  So the word at the
  consumer's next position is always 0 until the producer publishes there,
  even though record boundaries move from lap to lap.
* Batches: the writer may write several records and store the record word
  of the *first* one last; the reader cannot pass that word, so the whole
  batch becomes visible at once and ``tail`` is stored once.
"""

from __future__ import annotations

import time

import numpy as np

from hpbroker.ring import layout as L
from hpbroker.ring.errors import RingError
from hpbroker.ring.liveness import now_ns

__all__ = ["Ring", "header_snapshot"]


class Ring:
    """Views over one ring's memory.  ``init=True`` lays out a fresh header."""

    def __init__(
        self,
        buffer,
        *,
        init: bool = False,
        capacity: int | None = None,
        alignment: int = 8,
        doorbell: str = "",
        generation: int = 0,
        owner_pid: int = 0,
        owner_start: int = 0,
    ) -> None:
        mv = memoryview(buffer).cast("B")
        if mv.readonly:
            raise ValueError("ring buffer must be writable")
        if init:
            capacity = _lay_out(mv, capacity, alignment, doorbell, generation, owner_pid, owner_start)
        else:
            capacity, alignment = _validate(mv)
        hq = mv[: L.HEADER_BYTES].cast("q")
        self.capacity = capacity
        self.alignment = alignment
        self.mask = capacity - 1
        self.max_record = L.max_record(capacity)
        self.max_payload = L.max_payload(capacity)
        self.memory = mv
        self.hq = hq  # header as int64 words (hot-path access)
        data = mv[L.HEADER_BYTES : L.HEADER_BYTES + capacity]
        self.data = data  # data region as bytes
        self.dq = data.cast("Q")  # data region as record words
        # numpy views of the same bytes (vectorised access, inspection)
        self.header_array = np.frombuffer(mv[: L.HEADER_BYTES], dtype="<i8")
        self.data_array = np.frombuffer(data, dtype=np.uint8)

    # -- header fields -----------------------------------------------------------
    def get(self, offset: int) -> int:
        return self.hq[L.word(offset)]

    def set(self, offset: int, value: int) -> None:
        self.hq[L.word(offset)] = value

    @property
    def generation(self) -> int:
        return self.hq[L.word(L.GENERATION_OFF)]

    @property
    def doorbell(self) -> str:
        raw = bytes(self.memory[L.DOORBELL_OFF : L.DOORBELL_OFF + L.DOORBELL_BYTES])
        return raw.split(b"\0", 1)[0].decode("ascii")

    @property
    def head(self) -> int:
        return self.hq[L.word(L.HEAD_OFF)]

    @property
    def tail(self) -> int:
        return self.hq[L.word(L.TAIL_OFF)]

    def size(self) -> int:
        """Bytes published and not yet consumed (a snapshot)."""
        head = self.head
        return max(0, min(self.tail - head, self.capacity))

    def writer(self, **kw):
        from hpbroker.ring.writer import Writer

        return Writer(self, **kw)

    def reader(self, **kw):
        from hpbroker.ring.reader import Reader

        return Reader(self, **kw)

    def release(self) -> None:
        """Drop this object's views so the underlying mmap can be closed."""
        for name in ("header_array", "data_array", "hq", "dq", "data", "memory"):
            v = self.__dict__.pop(name, None)
            if isinstance(v, memoryview):
                v.release()


def header_snapshot(buffer) -> dict:
    """Decode a ring header from any (read-only) buffer, without touching it."""
    mv = memoryview(buffer).cast("B")
    w = np.frombuffer(mv[: L.HEADER_BYTES], dtype="<i8").copy()

    def g(off):
        return int(w[L.word(off)])

    magic = g(L.MAGIC_OFF) & ((1 << 64) - 1)
    raw = bytes(mv[L.DOORBELL_OFF : L.DOORBELL_OFF + L.DOORBELL_BYTES]).split(b"\0", 1)[0]
    ver = g(L.VERSION_OFF)
    return {
        "valid": magic == L.MAGIC,
        "version": ver & L.U32_MASK,
        "alignment": ver >> L.ALIGNMENT_SHIFT,
        "capacity": g(L.CAPACITY_OFF),
        "generation": g(L.GENERATION_OFF),
        "owner_pid": g(L.OWNER_PID_OFF),
        "owner_start": g(L.OWNER_START_OFF),
        "owner_heartbeat": g(L.OWNER_HEARTBEAT_OFF),
        "created_ns": g(L.CREATED_NS_OFF),
        "doorbell": raw.decode("ascii", "replace"),
        "tail": g(L.TAIL_OFF),
        "producer_pid": g(L.PRODUCER_PID_OFF),
        "producer_start": g(L.PRODUCER_START_OFF),
        "producer_heartbeat": g(L.PRODUCER_HEARTBEAT_OFF),
        "producer_state": g(L.PRODUCER_STATE_OFF),
        "producer_waiting": g(L.PRODUCER_WAITING_OFF),
        "head": g(L.HEAD_OFF),
        "consumer_pid": g(L.CONSUMER_PID_OFF),
        "consumer_start": g(L.CONSUMER_START_OFF),
        "consumer_heartbeat": g(L.CONSUMER_HEARTBEAT_OFF),
        "consumer_state": g(L.CONSUMER_STATE_OFF),
        "consumer_waiting": g(L.CONSUMER_WAITING_OFF),
    }


def _lay_out(mv, capacity, alignment, doorbell, generation, owner_pid, owner_start) -> int:
    """Write a fresh header (magic last) and zero the data region; -> the capacity."""
    if capacity is None:
        capacity = 1 << ((len(mv) - L.HEADER_BYTES).bit_length() - 1)
    if not L.is_power_of_two(capacity) or capacity < L.MIN_CAPACITY:
        raise ValueError(f"ring capacity must be a power of two >= {L.MIN_CAPACITY}, not {capacity}")
    if alignment not in L.ALIGNMENTS:
        raise ValueError(f"record alignment must be one of {L.ALIGNMENTS}, not {alignment}")
    if len(mv) < L.segment_bytes(capacity):
        raise ValueError(f"buffer of {len(mv)} bytes is too small for capacity {capacity}")
    name = doorbell.encode("ascii")
    if len(name) >= L.DOORBELL_BYTES:
        raise ValueError("doorbell name too long")
    mv[: L.HEADER_BYTES] = bytes(L.HEADER_BYTES)  # zero the header
    hq = mv[: L.HEADER_BYTES].cast("q")
    hq[L.word(L.VERSION_OFF)] = L.LAYOUT_VERSION | (alignment << L.ALIGNMENT_SHIFT)
    hq[L.word(L.CAPACITY_OFF)] = capacity
    hq[L.word(L.GENERATION_OFF)] = generation
    hq[L.word(L.OWNER_PID_OFF)] = owner_pid
    hq[L.word(L.OWNER_START_OFF)] = owner_start
    hq[L.word(L.OWNER_HEARTBEAT_OFF)] = now_ns()
    hq[L.word(L.CREATED_NS_OFF)] = time.time_ns()
    mv[L.DOORBELL_OFF : L.DOORBELL_OFF + len(name)] = name
    mv[L.HEADER_BYTES : L.HEADER_BYTES + capacity] = bytes(capacity)  # data region starts zeroed
    hq[L.word(L.MAGIC_OFF)] = L.MAGIC  # last: the header is valid from here on
    return capacity


def _validate(mv) -> tuple[int, int]:
    """Check an existing header; -> (capacity, alignment)."""
    if len(mv) < L.HEADER_BYTES:
        raise RingError("buffer too small for a ring header")
    hq = mv[: L.HEADER_BYTES].cast("q")
    if hq[L.word(L.MAGIC_OFF)] != L.MAGIC:
        raise RingError("not a ring (bad magic)")
    word = hq[L.word(L.VERSION_OFF)]
    if word & L.U32_MASK != L.LAYOUT_VERSION:
        raise RingError(f"ring layout version {word & L.U32_MASK}, expected {L.LAYOUT_VERSION}")
    alignment = word >> L.ALIGNMENT_SHIFT
    capacity = hq[L.word(L.CAPACITY_OFF)]
    if not L.is_power_of_two(capacity) or alignment not in L.ALIGNMENTS:
        raise RingError("ring header is corrupt")
    if len(mv) < L.segment_bytes(capacity):
        raise RingError("ring buffer is shorter than its header says")
    return capacity, alignment
