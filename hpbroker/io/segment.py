"""One segment: a ``.log`` file and its two sparse indexes.

The segment is the only unit that knows all three files (the data file's
appends go through :mod:`hpbroker.io.appender`).  It keeps the facts the log
needs without reading the file: logical size, next offset, largest
timestamp, and the index entries.  The index rule lives in
:meth:`Segment.note_batch` so appends and recovery build identical indexes.
"""

from __future__ import annotations

import os

from hpbroker.io import layout
from hpbroker.io.fs import FileSystem
from hpbroker.io.offset_index import OffsetIndex
from hpbroker.io.time_index import TimeIndex


class Segment:
    __slots__ = ("dir", "base", "size", "next_offset", "max_ts", "last_rel", "since_index",
                 "interval", "created_ms", "index", "tindex", "_read_fd", "_idx_fd", "_tidx_fd", "closed",
                 "finishing")

    def __init__(self, d: str, base: int, interval: int, created_ms: int):
        self.dir = d
        self.base = base
        self.size = 0
        self.next_offset = base
        self.max_ts = -1
        self.last_rel = -1
        self.since_index = 0
        self.interval = interval
        self.created_ms = created_ms
        self.index = OffsetIndex()
        self.tindex = TimeIndex()
        self._read_fd = -1
        self._idx_fd = -1
        self._tidx_fd = -1
        self.closed = False
        self.finishing = False  # rolled, indexes and checkpoint not yet written (off the writer's loop)

    @property
    def log_path(self) -> str:
        return layout.log_path(self.dir, self.base)

    @property
    def index_path(self) -> str:
        return layout.index_path(self.dir, self.base)

    @property
    def timeindex_path(self) -> str:
        return layout.timeindex_path(self.dir, self.base)

    def note_batch(self, rel: int, pos: int, length: int, max_ts: int, count: int) -> None:
        """Account for a batch appended at ``pos`` (the only per-batch bookkeeping)."""
        if max_ts > self.max_ts:
            self.max_ts = max_ts
        if self.since_index >= self.interval and pos > 0:
            self.index.append(rel, pos)
            self.tindex.maybe_append(self.max_ts, rel)
            self.since_index = 0
        self.since_index += length
        self.last_rel = rel
        self.size = pos + length
        self.next_offset = self.base + rel + count

    def seal(self) -> None:
        """Closing entry: the time index's last entry holds the segment's max timestamp."""
        if self.last_rel >= 0:
            self.tindex.maybe_append(self.max_ts, self.last_rel)

    # -- files -------------------------------------------------------------

    def read_fd(self, fs: FileSystem) -> int:
        if self._read_fd < 0:
            self._read_fd = fs.open(self.log_path, os.O_RDONLY)
        return self._read_fd

    def write_index_pending(self, fs: FileSystem, below_rel: int | None = None) -> None:
        """Append index entries created since the last call (buffered writes);
        with ``below_rel`` only those for relative offsets below it."""
        p = self.index.take_pending(below_rel)
        if p:
            if self._idx_fd < 0:
                self._idx_fd = fs.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            fs.write_all(self._idx_fd, p)
        p = self.tindex.take_pending(below_rel)
        if p:
            if self._tidx_fd < 0:
                self._tidx_fd = fs.open(self.timeindex_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            fs.write_all(self._tidx_fd, p)

    def rewrite_indexes(self, fs: FileSystem, sync: bool) -> None:
        """Replace both index files with the in-memory entries (after a rebuild)."""
        self._close_index_fds(fs)
        self.index.take_pending()
        self.tindex.take_pending()
        for path, data in ((self.index_path, self.index.to_bytes()), (self.timeindex_path, self.tindex.to_bytes())):
            fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                fs.write_all(fd, data, 0)
                if sync:
                    fs.fsync(fd)
            finally:
                fs.close(fd)

    def sync_indexes(self, fs: FileSystem) -> None:
        self.write_index_pending(fs)
        for fd, path in ((self._idx_fd, self.index_path), (self._tidx_fd, self.timeindex_path)):
            if fd >= 0:
                fs.fsync(fd)
            elif not os.path.exists(path):
                fs.close(fs.open(path, os.O_WRONLY | os.O_CREAT))

    def _close_index_fds(self, fs: FileSystem) -> None:
        for name in ("_idx_fd", "_tidx_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                fs.close(fd)

    def close(self, fs: FileSystem) -> None:
        self._close_index_fds(fs)
        if self._read_fd >= 0:
            fd, self._read_fd = self._read_fd, -1
            fs.close(fd)
        self.closed = True

    def delete(self, fs: FileSystem, later, archive=None) -> None:
        """Take the segment out: the log first (readers list segments by their
        .log), then the indexes.  Each file is renamed to ``<name>.deleted``
        (a metadata update) and ``later(paths)`` unlinks them off the caller's
        thread: unlinking a 256 MiB segment took ~50 ms on ext4, and the
        writer's loop must not stop for it.  Recovery unlinks ``.deleted``
        leftovers of a crash.  With ``archive``, the .log becomes
        ``<name>.archiving`` instead and ``archive(path)`` archives and
        unlinks it off the caller's thread; recovery archives leftovers."""
        self.close(fs)
        moved = []
        archiving = None
        for p in (self.log_path, self.index_path, self.timeindex_path):
            try:
                if archive is not None and p == self.log_path:
                    fs.rename(p, p + layout.ARCHIVING_SUFFIX)
                    archiving = p + layout.ARCHIVING_SUFFIX
                else:
                    fs.rename(p, p + layout.DELETED_SUFFIX)
                    moved.append(p + layout.DELETED_SUFFIX)
            except FileNotFoundError:
                pass
        if moved:
            later(moved)
        if archiving is not None:
            archive(archiving)
