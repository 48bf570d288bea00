"""PartitionReader: read a partition's segment files read-only, from any process.

The broker's acceptors serve fetches with this while the writer process
appends.  What it needs from the writer is only the high watermark (the next
offset that is committed: durable in ``durable`` mode), passed to each call;
it never returns a batch at or past it.  Everything else it learns from the
directory:

* Segments appear (rolls) and vanish (retention) concurrently.  The segment
  list is cached and re-read when an offset is not found in it or a file is
  gone; an fd opened before a delete keeps working.
* Index files lag the log (entries are written after the data) and may be
  short or half-written: an entry is a hint, the walk scans headers forward
  from the nearest one and falls back to the segment start.
* The active segment may end in O_DIRECT zero padding or a block being
  rewritten; the walk stops at a zero length word and the high watermark
  keeps it before anything not yet committed.

Not thread-safe (one reader per thread); cheap to create.
"""

from __future__ import annotations

import bisect
import os

from hpbroker.io import layout
from hpbroker.io.errors import OffsetOutOfRange
from hpbroker.io.fetch import find_timestamp, read_batches, starts_at
from hpbroker.io.offset_index import OffsetIndex
from hpbroker.io.time_index import TimeIndex


class PartitionReader:
    def __init__(self, d: str):
        self.dir = str(d)
        self._bases: list[int] = []
        self._fds: dict[int, int] = {}
        self._index: dict[int, tuple[int, OffsetIndex]] = {}

    def refresh(self) -> None:
        self._bases = layout.list_segments(self.dir)
        live = set(self._bases)
        for base in [b for b in self._fds if b not in live]:
            os.close(self._fds.pop(base))
            self._index.pop(base, None)

    def earliest_offset(self) -> int | None:
        self.refresh()
        return self._bases[0] if self._bases else None

    def _fd(self, base: int) -> int:
        fd = self._fds.get(base)
        if fd is None:
            fd = self._fds[base] = os.open(layout.log_path(self.dir, base), os.O_RDONLY)
        return fd

    def _offset_index(self, base: int) -> OffsetIndex:
        path = layout.index_path(self.dir, base)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return OffsetIndex()
        cached = self._index.get(base)
        if cached is None or cached[0] != size:
            cached = self._index[base] = (size, OffsetIndex.load(path))
        return cached[1]

    def read(self, offset: int, max_bytes: int, high_watermark: int) -> bytes:
        """Whole batches from the one holding ``offset``: at least one, else at
        most ``max_bytes``; none at or past ``high_watermark``.  b"" when
        nothing below the high watermark is there yet."""
        if offset >= high_watermark:
            return b""
        for attempt in range(3):
            if attempt or not self._bases or offset < self._bases[0]:
                self.refresh()
            if not self._bases:
                return b""
            if offset < self._bases[0]:
                raise OffsetOutOfRange(f"{self.dir}: offset {offset} is below the earliest offset {self._bases[0]}", self.dir)
            try:
                data, found = self._read_from(offset, max_bytes, high_watermark)
            except FileNotFoundError:
                continue  # deleted under us: re-list
            if found:
                return data
        return b""

    def _read_from(self, offset, max_bytes, hw):
        i = bisect.bisect_right(self._bases, offset) - 1
        for base in self._bases[i:]:
            fd = self._fd(base)
            size = os.fstat(fd).st_size
            rel, pos = self._offset_index(base).lookup(offset - base) if offset > base else (0, 0)
            data, exhausted = read_batches(fd, pos, size, offset, hw, max_bytes, start_offset=base + rel if pos else None)
            if exhausted and pos:  # a stale or damaged index entry (not a batch of its offset): walk from the start
                data, exhausted = read_batches(fd, 0, size, offset, hw, max_bytes)
            if data or not exhausted:
                return data, True
        return b"", False

    def offset_for_timestamp(self, ts_ms: int, high_watermark: int) -> int | None:
        """Base offset of the first committed batch with max_timestamp >= ``ts_ms``."""
        self.refresh()
        for k, base in enumerate(self._bases):
            if base >= high_watermark:
                return None
            try:
                tindex = TimeIndex.load(layout.timeindex_path(self.dir, base))
                last = k == len(self._bases) - 1
                if not last and len(tindex) and tindex.last_timestamp < ts_ms:
                    continue  # a closed segment's last entry is its largest timestamp
                rel = tindex.lookup_before(ts_ms)
                irel, pos = self._offset_index(base).lookup(rel) if rel is not None else (0, 0)
                fd = self._fd(base)
                if pos and not starts_at(fd, pos, base + irel):  # an index entry that does not hold
                    pos = 0
                off = find_timestamp(fd, pos, os.fstat(fd).st_size, ts_ms, high_watermark)
            except FileNotFoundError:
                continue
            if off is not None:
                return off
        return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._index.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
