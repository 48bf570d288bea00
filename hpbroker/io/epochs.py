"""The leader-epoch checkpoint of one partition (Kafka's KIP-101).

Every batch carries the leader epoch of the master that first appended it.
This file remembers where each epoch starts, so that a replica that was
master once (or missed a failover) can ask the current master "where did
*my* last epoch end on your side?" and cut its divergent tail exactly
there, instead of guessing from high watermarks.

File ``leader-epoch-checkpoint`` in the partition directory, text::

    hpbroker-epochs 1
    <epoch> <start_offset>
    ...

One line per epoch, ascending.  Written as temp file, fsync, rename, fsync
of the directory.  The writer records an epoch *before* the first batch of
that epoch can be acknowledged, so the file may name an epoch whose batches
a crash then lost: :meth:`EpochCache.load` drops entries at or past the
recovered log end.
"""

from __future__ import annotations

import os

from hpbroker.io.fs import FileSystem

NAME = "leader-epoch-checkpoint"
_MAGIC = "hpbroker-epochs 1"


def end_of(entries: list[tuple[int, int]], epoch: int, log_end_offset: int) -> tuple[int, int]:
    """(largest epoch <= ``epoch`` in ``entries`` ((epoch, start) ascending),
    the offset where it ends).  An epoch ends where the next one starts, or
    at the log end for the latest.  (-1, 0) when nothing is that old: the
    asker then keeps nothing."""
    best = -1
    end = 0
    for i, (e, _) in enumerate(entries):
        if e > epoch:
            break
        best = e
        end = entries[i + 1][1] if i + 1 < len(entries) else log_end_offset
    return best, end


class EpochCache:
    """The epochs of one partition.  Every write goes through ``fs``; when
    one fails, the error is raised and the cache (and the file) keep what
    they held, so the next :meth:`assign` of that epoch writes it again."""

    def __init__(self, partition_dir: str, log_end_offset: int, fs: FileSystem | None = None):
        self.path = os.path.join(partition_dir, NAME)
        self.fs = fs or FileSystem()
        self.entries: list[tuple[int, int]] = []
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        if lines and lines[0] == _MAGIC:
            for line in lines[1:]:
                epoch, start = map(int, line.split())
                if start < log_end_offset and (not self.entries or epoch > self.entries[-1][0]):
                    self.entries.append((epoch, start))

    @property
    def latest_epoch(self) -> int:
        return self.entries[-1][0] if self.entries else -1

    def assign(self, epoch: int, start_offset: int) -> None:
        """Note that ``epoch`` starts at ``start_offset`` (no-op for a known epoch)."""
        if epoch <= self.latest_epoch:
            return
        self._save([*self.entries, (epoch, start_offset)])

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(largest known epoch <= ``epoch``, the offset where it ends here);
        see :func:`end_of`."""
        return end_of(self.entries, epoch, log_end_offset)

    def truncate_from(self, offset: int) -> None:
        """Forget epochs that start at or after ``offset`` (the log was cut there)."""
        kept = [(e, s) for e, s in self.entries if s < offset]
        if kept != self.entries:
            self._save(kept)

    def _save(self, entries: list[tuple[int, int]]) -> None:
        """Write ``entries`` to the file, then hold them (only once they are written)."""
        data = "\n".join([_MAGIC, *(f"{e} {s}" for e, s in entries)]) + "\n"
        self.fs.write_atomic(self.path, data.encode())
        self.entries = entries
