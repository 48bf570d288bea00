"""The sparse time index: ``NNNN.timeindex``.

Entries are little-endian, 12 bytes, ascending in both fields.  An entry says
"every batch up to and including the one at ``relative_offset`` has
``max_timestamp <= timestamp``" (the largest timestamp seen so far in the
segment, as Kafka's time index does):

=======  ====  ===============  ==========================================
offset   size  field            notes
=======  ====  ===============  ==========================================
0        8     timestamp        int64 ms, largest batch max_timestamp so far
8        4     relative_offset  uint32, base offset of that batch - segment base
=======  ====  ===============  ==========================================

An entry is added next to each offset-index entry when the largest timestamp
grew, and once more when the segment is closed, so the last entry of a
closed segment holds its largest timestamp (retention by age reads it).
"""

from __future__ import annotations

import bisect
import struct
from array import array

from hpbroker.io.pending_entries import PendingEntries

ENTRY = struct.Struct("<qI")
ENTRY_SIZE = ENTRY.size


class TimeIndex(PendingEntries):
    ENTRY_SIZE = ENTRY_SIZE
    _columns = ("ts", "rel")
    __slots__ = ("ts", "rel", "_pending")

    def __init__(self):
        self.ts = array("q")
        self.rel = array("I")
        self._pending = bytearray()

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def last_timestamp(self) -> int | None:
        return self.ts[-1] if self.ts else None

    def maybe_append(self, ts: int, rel: int) -> None:
        if (not self.ts or ts > self.ts[-1]) and (not self.rel or rel > self.rel[-1]):
            self.ts.append(ts)
            self.rel.append(rel)
            self._pending += ENTRY.pack(ts, rel)

    def lookup_before(self, ts: int) -> int | None:
        """Relative offset of the last entry whose timestamp is < ``ts``: every
        batch up to it is older than ``ts``, so a search may start after it."""
        i = bisect.bisect_left(self.ts, ts) - 1
        return self.rel[i] if i >= 0 else None

    def to_bytes(self) -> bytes:
        return b"".join(ENTRY.pack(t, r) for t, r in zip(self.ts, self.rel))

    @classmethod
    def from_bytes(cls, data: bytes) -> "TimeIndex":
        idx = cls()
        n = len(data) // ENTRY_SIZE
        for t, r in ENTRY.iter_unpack(memoryview(data)[: n * ENTRY_SIZE]):
            if idx.ts and (t <= idx.ts[-1] or r <= idx.rel[-1]):
                break
            idx.ts.append(t)
            idx.rel.append(r)
        return idx

    @classmethod
    def load(cls, path: str) -> "TimeIndex":
        try:
            with open(path, "rb") as f:
                return cls.from_bytes(f.read())
        except FileNotFoundError:
            return cls()
