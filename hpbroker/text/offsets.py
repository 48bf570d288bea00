"""MetaQ byte offsets <-> hpbroker record offsets (docs/protocol-text.md, "Offsets").

A MetaQ consumer asks for messages at a byte offset and moves its offset on
by the MetaQ size of each message it takes (20 + attribute part + payload,
:mod:`hpbroker.text.records`).  hpbroker numbers records.  The mapping:

* each segment of a partition (``<base>.log``, base = its first record
  offset) starts at MetaQ offset ``base * 2**21``, as a MetaQ segment file
  is named after its first byte offset;
* inside a segment, a record's MetaQ offset is the segment's start plus the
  MetaQ sizes of every record before it in that segment: true byte
  offsets, so a consumer reads through a whole segment without a gap, and
  ``max_offset - offset`` is its lag in MetaQ bytes;
* the offset just past a segment's last record is not one where anything
  starts: a ``get`` there is answered ``301`` with the next segment's start
  (MetaQ's own offset correction), once per segment.

So an offset is a pure function of the log's contents (segment bases and
records), the same after a restart and the same for every process reading
the log; offsets grow with the records (comparing two says which record is
later); every record has exactly one.  ``2**21`` bytes per record bounds a
segment's MetaQ size (MetaQ's clients cannot read a message larger than
2 MiB anyway), and leaves room for ``2**42`` records in a partition.

Finding the MetaQ offset of a record means summing sizes from its segment's
start.  :class:`PartitionView` keeps a sparse index per segment (an entry
every 64 KiB of MetaQ bytes: record offset, MetaQ offset, batch CRC) that
it builds as it reads, so a lookup reads at most 64 KiB plus a batch; a
cold lookup (after a restart) scans the segment from its start once, in
steps of ``budget`` bytes so the caller can serve others in between.  Each
step checks the CRC of the batch it starts from against the index's, so
a log that was cut and written again under the index (a slave truncating
a divergent tail) is noticed: the segment's index is dropped and rebuilt.

I/O is passed in (a :class:`Source`): the listing of segment bases and a
reader of whole batches below a high watermark (``PartitionReader``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from hpbroker import batch as B
from hpbroker.text.records import Batch

SLOT_BITS = 21
SLOT = 1 << SLOT_BITS
#: the largest record offset whose MetaQ offset fits an int64
MAX_RECORD = (1 << (63 - SLOT_BITS)) - 1
SPARSE_BYTES = 1 << 16
READ_BYTES = 4 << 20


class Source:
    """What a PartitionView reads: segment bases, and whole batches."""

    def segments(self) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def read(self, offset: int, max_bytes: int, high_watermark: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


class SegmentIndex:
    """Sparse (record offset, MetaQ bytes before it in the segment, batch
    CRC) entries at batch starts, and how far it is known (``end``,
    ``end_cum``: the record after the last one indexed and its position)."""

    __slots__ = ("base", "bases", "cums", "crcs", "end", "end_cum", "tail")

    def __init__(self, base: int):
        self.base = base
        self.bases = [base]
        self.cums = [0]
        self.crcs: list[int | None] = [None]
        self.end = base
        self.end_cum = 0
        self.tail: tuple[int, int] | None = None  # (base, CRC) of the last batch indexed

    def add(self, base: int, count: int, size: int, crc: int) -> None:
        """The batch that starts at ``end``."""
        self.tail = (base, crc)
        if base == self.bases[-1]:
            self.crcs[-1] = crc
        elif self.end_cum - self.cums[-1] >= SPARSE_BYTES:
            self.bases.append(base)
            self.cums.append(self.end_cum)
            self.crcs.append(crc)
        self.end = base + count
        self.end_cum += size

    def floor_record(self, r: int) -> int:
        return bisect.bisect_right(self.bases, r) - 1

    def floor_cum(self, cum: int) -> int:
        return bisect.bisect_right(self.cums, cum) - 1

    def reset(self) -> None:
        """Forget it all: the log was cut and written again under the index
        (a slave truncating a divergent tail, an ENOSPC rollback); only a
        scan from the segment's start is sure to see the new contents."""
        self.__init__(self.base)


# -- outcomes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """The index needs more scanning: call again (the budget ran out)."""


@dataclass(frozen=True, slots=True)
class Moved:
    """MetaQ's 301: go on from ``offset`` instead."""

    offset: int
    why: str


@dataclass(frozen=True, slots=True)
class NoData:
    """Nothing at ``offset`` yet (404); ``beyond``: the offset is past the end, ``max_offset``."""

    offset: int
    beyond: bool
    max_offset: int


@dataclass(frozen=True, slots=True)
class Messages:
    """``parts`` joined are MetaQ messages starting at the requested offset
    (``count`` of them, ``size`` bytes; the first may be cut at max_size)."""

    parts: list
    count: int
    size: int


PENDING = Pending()


class PartitionView:
    def __init__(self, source: Source, topic_key: int):
        self.source = source
        self.topic_key = topic_key
        self.bases: list[int] = []
        self.index: dict[int, SegmentIndex] = {}
        self.listed_upto = -1  # every segment holding a record below this is listed

    # -- segments -------------------------------------------------------------------

    def relist(self, upto: int) -> None:
        """Re-read the segment list unless it already covers records below ``upto``."""
        if upto <= self.listed_upto:
            return
        self.bases = self.source.segments()
        live = set(self.bases)
        for b in [b for b in self.index if b not in live]:
            del self.index[b]
        self.listed_upto = upto

    def _seg_of_record(self, r: int) -> int | None:
        i = bisect.bisect_right(self.bases, r) - 1
        return self.bases[i] if i >= 0 else None

    def _seg_of_position(self, offset: int) -> int | None:
        i = bisect.bisect_right(self.bases, offset >> SLOT_BITS) - 1
        return self.bases[i] if i >= 0 else None

    def _next(self, base: int) -> int | None:
        i = bisect.bisect_right(self.bases, base)
        return self.bases[i] if i < len(self.bases) else None

    def _idx(self, base: int) -> SegmentIndex:
        idx = self.index.get(base)
        if idx is None:
            idx = self.index[base] = SegmentIndex(base)
        return idx

    def bounds(self, hwm: int, budget: int = 1 << 62):
        """(min_offset, max_offset) below ``hwm``, or PENDING."""
        self.relist(hwm)
        if not self.bases:
            return 0, 0
        last = self.bases[-1]
        if not self._extend(last, hwm, None, hwm, budget):
            return PENDING
        return self.bases[0] << SLOT_BITS, (last << SLOT_BITS) + self.index[last].end_cum

    # -- scanning ---------------------------------------------------------------------

    def _extend(self, seg: int, upto_record: int, upto_cum: int | None, hwm: int, budget: int) -> bool:
        """Index ``seg`` until its end passes ``upto_record`` (or its cum
        passes ``upto_cum``), or the segment (or the log below ``hwm``)
        ends; False when ``budget`` bytes were read first.  Each read
        starts at the last batch indexed, to check it is still there."""
        idx = self._idx(seg)
        nxt = self._next(seg)
        stop = hwm if nxt is None else min(nxt, hwm)
        if idx.end > stop and nxt is None:
            idx.reset()  # the log is shorter than the index: it was cut
        read = 0
        check = idx.tail  # the first read starts at the last batch indexed, to see it is still there
        while idx.end < stop and idx.end < upto_record and (upto_cum is None or idx.end_cum <= upto_cum):
            if read >= budget:
                return False
            data = self.source.read(idx.end if check is None else check[0], READ_BYTES, stop)
            if not data:
                return True  # deleted under us, or nothing committed there: as far as it goes
            if check is None:
                read += len(data)  # (the first read, which checks the tail, is not counted: progress is)
            batches = B.iter_batches(data)
            if check is not None:
                first = next(batches, None)
                if first is None or (first[1].base_offset, first[1].crc) != check:
                    idx.reset()
                check = None
            for pos, h in batches:
                if h.base_offset >= stop:
                    break
                if h.base_offset != idx.end:
                    idx.reset()  # not the batch the index expects next
                    break
                idx.add(h.base_offset, h.record_count, int(Batch(data, pos, h).sizes.sum()), h.crc)
                if idx.end >= upto_record or (upto_cum is not None and idx.end_cum > upto_cum):
                    break
        return True

    def _walk_from(self, idx: SegmentIndex, i: int, hwm: int):
        """Batches from entry ``i`` on, as (Batch, MetaQ position of its first
        record) pairs; entry ``i``'s CRC is checked against the log."""
        r, cum = idx.bases[i], idx.cums[i]
        first = True
        while r < hwm:
            data = self.source.read(r, READ_BYTES, hwm)
            if not data:
                return
            for pos, h in B.iter_batches(data):
                if h.base_offset != r or (first and idx.crcs[i] is not None and idx.crcs[i] != h.crc):
                    if first:
                        idx.reset()  # not the batch indexed there
                    return
                first = False
                b = Batch(data, pos, h)
                yield b, cum
                cum += int(b.sizes.sum())
                r = h.base_offset + h.record_count

    # -- what the verbs ask -------------------------------------------------------------

    def record_position(self, r: int, hwm: int, budget: int = 1 << 62):
        """MetaQ offset of record ``r`` (which must start a batch, below
        ``hwm``), or PENDING."""
        self.relist(r + 1)
        seg = self._seg_of_record(r)
        if seg is None:
            raise LookupError(f"record {r} is below the log start")
        idx = self._idx(seg)
        if idx.end <= r:
            if not self._extend(seg, r, None, r, budget):
                return PENDING
            if idx.end == r:
                return (seg << SLOT_BITS) + idx.end_cum
        i = idx.floor_record(r)
        for b, cum in self._walk_from(idx, i, hwm):
            if b.header.base_offset == r:
                return (seg << SLOT_BITS) + cum
            if b.header.base_offset > r:
                break
        raise LookupError(f"record {r} does not start a batch")

    def note_batch(self, r: int, count: int, size: int, crc: int) -> None:
        """A batch just written at ``r`` whose position was found with
        record_position: index it without reading it back."""
        seg = self._seg_of_record(r)
        idx = self.index.get(seg) if seg is not None else None
        if idx is not None and idx.end == r:
            idx.add(r, count, size, crc)

    def read(self, offset: int, max_size: int, hwm: int, budget: int = 1 << 62):
        """What ``get`` answers at MetaQ ``offset``: Messages, Moved, NoData or PENDING."""
        self.relist(hwm)
        if not self.bases:
            return NoData(offset, offset > 0, 0)
        seg = self._seg_of_position(offset)
        if seg is None:
            return Moved(self.bases[0] << SLOT_BITS, "below the log start")
        delta = offset - (seg << SLOT_BITS)
        idx = self._idx(seg)
        nxt = self._next(seg)
        if not self._extend(seg, 1 << 62, delta, hwm, budget):
            return PENDING
        if delta >= idx.end_cum:
            # the segment (below hwm) is indexed to its end and delta is at or past it
            if nxt is not None and idx.end >= nxt:
                return Moved(nxt << SLOT_BITS, "end of segment")
            return NoData(offset, delta > idx.end_cum, (seg << SLOT_BITS) + idx.end_cum)
        i = idx.floor_cum(delta)
        stop = hwm if nxt is None else min(nxt, hwm)
        parts: list = []
        count = size = 0
        found = False
        for b, cum in self._walk_from(idx, i, stop):
            if not found:
                end = cum + int(b.sizes.sum())
                if end <= delta:
                    continue
                starts = cum + np.concatenate(([0], np.cumsum(b.sizes)[:-1]))
                k = int(np.searchsorted(starts, delta, side="right")) - 1
                if int(starts[k]) != delta:
                    return Moved((seg << SLOT_BITS) + int(starts[k]), "not the start of a message")
                found = True
                first = k
            else:
                first = 0
            sizes = b.sizes[first:]
            fits = int(np.searchsorted(np.cumsum(sizes), max_size - size, side="right"))
            if fits == 0 and count == 0:  # the first message alone is larger than max_size: a cut copy, as MetaQ sends
                whole = b"".join(b.messages(first, first + 1, self.topic_key))
                return Messages([whole[:max_size]], 0, max_size)
            parts += b.messages(first, first + fits, self.topic_key)
            count += fits
            size += int(sizes[:fits].sum())
            if fits < len(sizes):
                break
        if not found:  # the log changed under the index (cut, or segments deleted): list and scan again
            self.listed_upto = -1
            return PENDING
        return Messages(parts, count, size)

    def nearest(self, offset: int, hwm: int, budget: int = 1 << 62):
        """MetaQ's ``offset`` verb: the start of the segment holding
        ``offset``; the log start below it, the end above it (or PENDING)."""
        b = self.bounds(hwm, budget)
        if b is PENDING:
            return PENDING
        lo, hi = b
        if offset <= lo:
            return lo
        if offset >= hi:
            return hi
        return self._seg_of_position(offset) << SLOT_BITS
