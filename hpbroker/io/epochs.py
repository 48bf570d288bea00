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

import bisect
import logging
import os

from hpbroker.io.fs import FileSystem

log = logging.getLogger("hpbroker.io")

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


def read_entries(partition_dir: str) -> list[tuple[int, int]] | None:
    """The ``(epoch, start_offset)`` lines of a partition's checkpoint, as
    written ([] when there is no file); None when the file is damaged (a
    line that is not two integers, a missing first line, epochs or starts
    that do not ascend)."""
    try:
        with open(os.path.join(partition_dir, NAME), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    try:
        lines = raw.decode("ascii").split("\n")
    except UnicodeDecodeError:
        return None
    if lines[-1] == "":
        lines.pop()
    else:
        return None  # every write ends in a newline
    if not lines or lines[0] != _MAGIC:
        return None
    out: list[tuple[int, int]] = []
    for line in lines[1:]:
        parts = line.split(" ")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return None
        epoch, start = int(parts[0]), int(parts[1])
        if out and (epoch <= out[-1][0] or start < out[-1][1]):
            return None
        out.append((epoch, start))
    return out


def rebuild_entries(partition_dir: str) -> list[tuple[int, int]]:
    """Where each epoch starts, from the batch headers of every segment (one
    header read per batch; for a damaged checkpoint)."""
    from hpbroker.io import layout
    from hpbroker.io.scan import scan

    out: list[tuple[int, int]] = []
    for base in layout.list_segments(partition_dir):
        path = layout.log_path(partition_dir, base)

        def on_batch(pos, h):
            if not out or h.leader_epoch > out[-1][0]:
                out.append((h.leader_epoch, h.base_offset))

        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            scan(fd, 0, os.fstat(fd).st_size, base, on_batch, check=False)
        finally:
            os.close(fd)
    return out


class EpochRanges:
    """Which epoch wrote each offset, by the checkpoint: the entry with the
    largest start at or below it (the later one of two with the same start:
    an epoch that kept no batch)."""

    __slots__ = ("starts", "epochs")

    def __init__(self, entries: list[tuple[int, int]]):
        self.starts = [s for _, s in entries]
        self.epochs = [e for e, _ in entries]

    def at(self, offset: int) -> int | None:
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.epochs[i] if i >= 0 else None


def known_epochs(entries: list[tuple[int, int]] | None) -> EpochRanges | None:
    """The checkpoint's :class:`EpochRanges` for a scan's structural check (None: no checkpoint to check against)."""
    return EpochRanges(entries) if entries else None


class EpochCache:
    """The epochs of one partition.  Every write goes through ``fs``; when
    one fails, the error is raised and the cache (and the file) keep what
    they held, so the next :meth:`assign` of that epoch writes it again."""

    def __init__(self, partition_dir: str, log_end_offset: int, fs: FileSystem | None = None):
        self.path = os.path.join(partition_dir, NAME)
        self.fs = fs or FileSystem()
        self.entries: list[tuple[int, int]] = []
        entries = read_entries(partition_dir)
        if entries is None:  # damaged: the batches themselves say where each epoch starts
            entries = rebuild_entries(partition_dir)
            log.warning("%s is damaged; rebuilt from the log's batch headers: %s", self.path,
                        ", ".join(f"epoch {e} from offset {s}" for e, s in entries) or "no batches")
            self._save([(e, s) for e, s in entries if s < log_end_offset])
        for epoch, start in entries:
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
