"""Idempotent producers: the last sequence numbers of each producer, per partition.

A batch of an idempotent producer carries its ``producer_id`` and the
``base_sequence`` of its first record (hpbroker.batch, bytes 48-59); record
``i`` has sequence ``base_sequence + i`` (wrapping after 2**31 - 1 to 0).
For each producer the partition remembers its last :data:`CACHED` batches.
A new batch is:

==========================  ====================================================
first sequence              verdict
==========================  ====================================================
last sequence + 1           in order: append
= a cached batch's, same    a duplicate (a retry whose first attempt was
count                       written): do not append, answer with the cached
                            offsets once they are durable
older than the cache        DUPLICATE_SEQUENCE_NUMBER: written long ago, offsets
                            no longer known
anything else               OUT_OF_ORDER_SEQUENCE_NUMBER: a gap (a batch in
                            between was lost or refused)
==========================  ====================================================

A producer this partition has never seen may start at any sequence (its
earlier batches may be older than every snapshot).  Kafka's KIP-98 does the
same, with 5 cached batches.

**Durability.**  The state is rebuilt from the log, which holds every
batch's producer id and sequence: a snapshot file ``producers.snapshot``
holds the state as of an offset (written when a segment rolls, as the
recovery checkpoint is), and opening a partition replays the batch headers
after it (the recovery scan reads those headers anyway).  A slave's log has
the same batches, so a promoted slave has the same state.  docs/design.md,
"Idempotent producers", has the why.

Snapshot file (msgpack, written with FileSystem.write_atomic):
``{"v": 1, "offset": int, "producers": [[producer_id, [[first_seq, last_seq,
base_offset, last_offset], ...]], ...]}``
"""

from __future__ import annotations

import os
from collections import deque
from typing import Iterable

import msgspec

from hpbroker.io.scan import scan

CACHED = 5
SEQ_MOD = 1 << 31
SNAPSHOT = "producers.snapshot"

APPEND = 0
DUPLICATE = 1


class SequenceError(ValueError):
    """A batch refused for its sequence number; ``code`` is the wire error code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


#: the wire codes (hpbroker.protocol.errors; io may not import protocol)
DUPLICATE_SEQUENCE_NUMBER = 20
OUT_OF_ORDER_SEQUENCE_NUMBER = 21


class _Snapshot(msgspec.Struct):
    v: int
    offset: int
    producers: list[tuple[int, list[tuple[int, int, int, int]]]]


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(_Snapshot)


class ProducerState:
    def __init__(self):
        #: producer id -> its last batches: (first_seq, last_seq, base_offset, last_offset)
        self.producers: dict[int, deque] = {}

    def __len__(self) -> int:
        return len(self.producers)

    def check(self, pid: int, first_seq: int, count: int) -> tuple[int, int, int]:
        """(APPEND, -1, -1) or (DUPLICATE, base_offset, last_offset); raises SequenceError."""
        batches = self.producers.get(pid)
        if not batches:
            return APPEND, -1, -1
        last = batches[-1][1]
        if first_seq == (last + 1) % SEQ_MOD:
            return APPEND, -1, -1
        end = (first_seq + count - 1) % SEQ_MOD
        for f, l, base, lo in batches:
            if f == first_seq and l == end:
                return DUPLICATE, base, lo
        oldest = batches[0][0]
        if _behind(first_seq, oldest):
            raise SequenceError(DUPLICATE_SEQUENCE_NUMBER,
                                f"producer {pid}: sequence {first_seq} is older than the {len(batches)} batches this "
                                f"partition remembers (from {oldest}): written long ago")
        raise SequenceError(OUT_OF_ORDER_SEQUENCE_NUMBER,
                            f"producer {pid}: sequence {first_seq} does not follow {last}: a batch in between is "
                            "missing (refused or lost); resend from the first unacknowledged one")

    def apply(self, pid: int, first_seq: int, count: int, base_offset: int) -> None:
        """A batch of producer ``pid`` was appended at ``base_offset``."""
        batches = self.producers.get(pid)
        if batches is None:
            batches = self.producers[pid] = deque(maxlen=CACHED)
        batches.append((first_seq, (first_seq + count - 1) % SEQ_MOD, base_offset, base_offset + count - 1))

    # -- snapshot and rebuild --------------------------------------------------------

    def encode(self, offset: int) -> bytes:
        return _enc.encode({"v": 1, "offset": offset,
                            "producers": [[pid, [list(b) for b in bs]] for pid, bs in self.producers.items()]})

    @classmethod
    def decode(cls, data: bytes) -> tuple["ProducerState", int]:
        snap = _dec.decode(data)
        st = cls()
        for pid, bs in snap.producers:
            st.producers[pid] = deque((tuple(b) for b in bs), maxlen=CACHED)
        return st, snap.offset

    def forget_from(self, offset: int) -> None:
        """Drop what was appended at or after ``offset`` (a rolled-back append)."""
        for pid in list(self.producers):
            kept = deque((b for b in self.producers[pid] if b[2] < offset), maxlen=CACHED)
            if kept:
                self.producers[pid] = kept
            else:
                del self.producers[pid]


def _behind(a: int, b: int) -> bool:
    """Is sequence ``a`` before ``b`` (mod 2**31, within half the space)?"""
    return 0 < (b - a) % SEQ_MOD < SEQ_MOD // 2


def load(d: str, segments: Iterable, end_offset: int, recovery_point: int) -> ProducerState:
    """The state of partition directory ``d`` whose log ends at
    ``end_offset``: the snapshot (unless it is past the end: a truncation
    cut below it), then every batch header after it.  With no usable
    snapshot (a log from before idempotence, or a truncation below it), the
    batches from ``recovery_point`` on, which recovery has just scanned:
    producers older than that are unknown, and may start at any sequence."""
    state, start = ProducerState(), recovery_point
    try:
        with open(os.path.join(d, SNAPSHOT), "rb") as f:
            loaded, offset = ProducerState.decode(f.read())
        if offset <= end_offset:
            state, start = loaded, offset
    except (FileNotFoundError, msgspec.DecodeError, ValueError, TypeError):
        pass  # none, or unreadable: rebuild from the whole log
    replay(state, d, segments, start, end_offset)
    return state


def replay(state: ProducerState, d: str, segments: Iterable, start: int, end_offset: int) -> None:
    """Apply the producer fields of every batch in [start, end_offset)."""
    for seg in segments:
        nxt = seg.next_offset
        if nxt <= start or seg.base >= end_offset or not seg.size:
            continue
        rel, pos = seg.index.lookup(start - seg.base) if start > seg.base else (0, 0)

        def on_batch(_pos, h):
            if h.producer_id >= 0 and h.base_offset >= start and h.base_offset < end_offset:
                state.apply(h.producer_id, h.base_sequence, h.record_count, h.base_offset)

        fd = os.open(seg.log_path, os.O_RDONLY)
        try:
            end = scan(fd, pos, seg.size, seg.base + rel, on_batch, check=False)
            if end.reason is not None and end.pos == pos and pos:  # an index entry that does not hold
                scan(fd, 0, seg.size, seg.base, on_batch, check=False)
        finally:
            os.close(fd)


def write_snapshot(fs, d: str, data: bytes) -> None:
    fs.write_atomic(os.path.join(d, SNAPSHOT), data)


