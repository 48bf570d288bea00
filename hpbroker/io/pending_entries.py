"""What the offset index and the time index share: entries kept in memory as
parallel arrays, the newest of them not yet written to their file.

Entries are written only up to the acknowledged offset, so a rollback after
ENOSPC can still drop the ones past it (``truncate_from``); entries already
on disk are never dropped here.
"""

from __future__ import annotations

import bisect


class PendingEntries:
    """Mixin: subclasses set ``ENTRY_SIZE`` and ``_columns`` (the names of
    their parallel arrays, one of them ``rel``) and keep ``_pending``."""

    __slots__ = ()
    ENTRY_SIZE: int
    _columns: tuple[str, ...]

    def truncate_from(self, rel: int) -> None:
        """Drop entries with relative offset >= ``rel`` (not yet written ones only)."""
        i = bisect.bisect_left(self.rel, rel)
        drop = len(self.rel) - i
        if drop <= 0:
            return
        if drop * self.ENTRY_SIZE > len(self._pending):
            raise AssertionError(f"truncating {type(self).__name__} entries already written to the file")
        for name in self._columns:
            del getattr(self, name)[i:]
        del self._pending[len(self._pending) - drop * self.ENTRY_SIZE :]

    def take_pending(self, below_rel: int | None = None) -> bytes:
        """Pending (unwritten) entries, oldest first; with ``below_rel`` only those below it."""
        if below_rel is None:
            p = bytes(self._pending)
            self._pending.clear()
            return p
        later = len(self.rel) - bisect.bisect_left(self.rel, below_rel)  # entries to keep pending
        take = max(0, len(self._pending) - later * self.ENTRY_SIZE)
        p = bytes(self._pending[:take])
        del self._pending[:take]
        return p
