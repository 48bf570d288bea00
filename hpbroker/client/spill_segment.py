"""One spill segment file in memory: its name, its durable size, its records' acknowledgement flags.

A segment ``<first seq, 20 digits>.spill`` holds the records from its first
seq on (:mod:`~hpbroker.client.spill_format` draws its frames);
:class:`~hpbroker.client.spill.SpillJournal` rolls segments over and deletes
them (its docstring, "Segments").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

#: a segment's file name: its first seq in 20 digits
SEGMENT_NAME = re.compile(r"^(\d{20})\.spill$")


def segment_path(directory: Path, base: int) -> Path:
    """The file of the segment whose first seq is ``base``."""
    return directory / f"{base:020d}.spill"


class Segment:
    """One segment file: its first seq, its durable size, its records'
    acknowledgement flags."""

    __slots__ = ("base", "path", "size", "count", "acked", "nacked")

    def __init__(self, base: int, path: Path, size: int = 0):
        self.base = base
        self.path = path
        self.size = size
        self.count = 0
        self.acked = np.zeros(1024, dtype=bool)  # capacity grows; [0, count) is meaningful
        self.nacked = 0

    def grow(self, n: int) -> None:
        need = self.count + n
        if need > len(self.acked):
            bigger = np.zeros(max(need, 2 * len(self.acked)), dtype=bool)
            bigger[: self.count] = self.acked[: self.count]
            self.acked = bigger
        self.count = need

    def mark(self, idx: np.ndarray) -> int:
        """Flag records ``idx`` (relative to base) acknowledged; return how many were new."""
        new = int(np.count_nonzero(~self.acked[idx]))
        self.acked[idx] = True
        self.nacked += new
        return new

    @property
    def done(self) -> bool:
        return self.nacked >= self.count

    @property
    def end(self) -> int:
        return self.base + self.count


def mark_acked(segments: list[Segment], arr: np.ndarray) -> int:
    """Flag the seqs ``arr`` acknowledged in the segments that hold them
    (seqs of segments deleted already, or past a segment's records, are
    skipped); return how many were new."""
    new = 0
    bases = np.array([s.base for s in segments], dtype=np.int64)
    where = np.searchsorted(bases, arr, side="right") - 1
    for i in np.unique(where).tolist():
        if i < 0:
            continue  # acknowledged in a segment deleted already
        seg = segments[i]
        rel = arr[where == i] - seg.base
        rel = rel[rel < seg.count]
        new += seg.mark(rel)
    return new
