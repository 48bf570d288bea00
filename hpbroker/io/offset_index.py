"""The sparse offset index: ``NNNN.index``.

One entry every ``index_interval_bytes`` of batches, pointing at the start of
a batch.  Entries are little-endian, 8 bytes, ascending in both fields:

=======  ====  ===============  ==========================================
offset   size  field            notes
=======  ====  ===============  ==========================================
0        4     relative_offset  uint32, batch base offset - segment base
4        4     position         uint32, byte position of the batch in .log
=======  ====  ===============  ==========================================

The index is derived data: it is rebuilt from the ``.log`` for every segment
recovery scans, and readers treat it as a hint (a lagging or short index only
means scanning more headers forward).  A trailing partial entry is ignored.
"""

from __future__ import annotations

import bisect
import struct
from array import array

from hpbroker.io.pending_entries import PendingEntries

ENTRY = struct.Struct("<II")
ENTRY_SIZE = ENTRY.size


class OffsetIndex(PendingEntries):
    """Entries in memory (two compact arrays), appended to the file lazily."""

    ENTRY_SIZE = ENTRY_SIZE
    _columns = ("rel", "pos")
    __slots__ = ("rel", "pos", "_pending")

    def __init__(self):
        self.rel = array("I")
        self.pos = array("I")
        self._pending = bytearray()  # entries not yet written to the file

    def __len__(self) -> int:
        return len(self.rel)

    def append(self, rel: int, pos: int) -> None:
        self.rel.append(rel)
        self.pos.append(pos)
        self._pending += ENTRY.pack(rel, pos)

    def lookup(self, rel: int) -> tuple[int, int]:
        """(relative_offset, position) of the last entry at or below ``rel``; (0, 0) if none."""
        i = bisect.bisect_right(self.rel, rel) - 1
        if i < 0:
            return 0, 0
        return self.rel[i], self.pos[i]

    def to_bytes(self) -> bytes:
        out = bytearray(len(self.rel) * ENTRY_SIZE)
        for i, (r, p) in enumerate(zip(self.rel, self.pos)):
            ENTRY.pack_into(out, i * ENTRY_SIZE, r, p)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, max_pos: int | None = None) -> "OffsetIndex":
        """Parse entries, stopping at the first one that breaks monotonicity
        or points past ``max_pos`` (a lagging or damaged file is a hint only)."""
        idx = cls()
        n = len(data) // ENTRY_SIZE
        last_r = last_p = -1
        for r, p in ENTRY.iter_unpack(memoryview(data)[: n * ENTRY_SIZE]):
            if r <= last_r or p <= last_p or (max_pos is not None and p >= max_pos):
                break
            idx.rel.append(r)
            idx.pos.append(p)
            last_r, last_p = r, p
        return idx

    @classmethod
    def load(cls, path: str, max_pos: int | None = None) -> "OffsetIndex":
        try:
            with open(path, "rb") as f:
                return cls.from_bytes(f.read(), max_pos)
        except FileNotFoundError:
            return cls()

