"""A file system layer that remembers what a power loss could take away.

:class:`CrashRecorder` is a :class:`~hpbroker.io.fs.FileSystem`: every call
goes to the real file as usual (the code under test runs normally), and
every change is also recorded.  Per file it keeps the content as of the
file's last ``fsync``/``fdatasync`` and the writes and truncations made
since.  :meth:`CrashRecorder.crash_state` writes, into another directory,
one state the files could be in after a power loss at that moment: the
synced content, then each later change kept, dropped, or (a write) torn at
512-byte sectors, each chosen at random.  That is what LazyFS does for a
real filesystem (unsynced data lost), made harsher: later changes may
survive where earlier ones did not, and a write may land in part.

Metadata changes (creating, renaming and removing files) are durable at
once, as LazyFS treats them; every one of them in hpbroker is followed by a
directory fsync anyway (``FileSystem.write_atomic``, segment creation).

The states are written as plain files; reopening them with a plain
``FileSystem`` is "remounting" after the power loss.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading

from hpbroker.io.fs import FileSystem

SECTOR = 512


class CrashRecorder(FileSystem):
    """Records the changes under ``root``.  ``seq`` counts them; ``on_change(seq)``
    (optional) is called after each, under the recorder's lock."""

    def __init__(self, root: str, on_change=None):
        self.root = os.path.abspath(root)
        self.on_change = on_change
        self._lock = threading.RLock()
        self._fds: dict[int, str] = {}
        self.durable: dict[str, bytearray] = {}  # path -> content at its last sync
        self.pending: dict[str, list[tuple]] = {}  # path -> [("w", pos, data) | ("t", length)] since then
        self.seq = 0

    # -- recording -------------------------------------------------------------------

    def _ours(self, path) -> str | None:
        if path is None:
            return None
        p = os.path.abspath(os.fspath(path))
        return p if p.startswith(self.root + os.sep) else None

    def _changed(self) -> None:
        self.seq += 1
        if self.on_change is not None:
            self.on_change(self.seq)

    def open(self, path, flags, mode=0o644):
        p = self._ours(path)
        with self._lock:
            existed = p is not None and os.path.exists(p)
            fd = super().open(path, flags, mode)
            if p is not None:
                self._fds[fd] = p
                if not existed or p not in self.durable:
                    self.durable[p] = bytearray()  # created: durable at once (empty)
                    self.pending[p] = []
                    self._changed()
                if flags & os.O_TRUNC:
                    self.pending[p].append(("t", 0))
                    self._changed()
        return fd

    def close(self, fd):
        with self._lock:
            self._fds.pop(fd, None)
        super().close(fd)

    def _write(self, fd: int, buf, pos: int | None, real) -> int:
        p = self._fds.get(fd)
        if p is None:
            return real()
        with self._lock:
            if pos is None:
                append = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
                pos = os.fstat(fd).st_size if append else os.lseek(fd, 0, os.SEEK_CUR)
            n = real()
            self.pending[p].append(("w", pos, bytes(memoryview(buf).cast("B")[:n])))
            self._changed()
            return n

    def pwrite(self, fd, buf, pos):
        return self._write(fd, buf, pos, lambda: FileSystem.pwrite(self, fd, buf, pos))

    def write(self, fd, buf):
        return self._write(fd, buf, None, lambda: FileSystem.write(self, fd, buf))

    def ftruncate(self, fd, length):
        p = self._fds.get(fd)
        with self._lock:
            super().ftruncate(fd, length)
            if p is not None:
                self.pending[p].append(("t", length))
                self._changed()

    def _sync(self, fd, real) -> None:
        p = self._fds.get(fd)
        real()
        if p is None:
            return
        with self._lock:
            self.durable[p] = _apply(self.durable[p], self.pending[p])
            self.pending[p] = []
            self._changed()

    def fdatasync(self, fd):
        self._sync(fd, lambda: FileSystem.fdatasync(self, fd))

    def fsync(self, fd):
        self._sync(fd, lambda: FileSystem.fsync(self, fd))

    def rename(self, src, dst):
        s, d = self._ours(src), self._ours(dst)
        with self._lock:
            super().rename(src, dst)
            if s is not None and d is not None and s in self.durable:
                self.durable[d] = self.durable.pop(s)
                self.pending[d] = self.pending.pop(s)
                for fd, p in self._fds.items():
                    if p == s:
                        self._fds[fd] = d
                self._changed()

    def unlink(self, path):
        p = self._ours(path)
        with self._lock:
            super().unlink(path)
            if p is not None:
                self.durable.pop(p, None)
                self.pending.pop(p, None)
                self._changed()

    # -- crash states ----------------------------------------------------------------

    def crash_state(self, dest: str, rnd: random.Random, keep: float = 0.5, tear: float = 0.25) -> int:
        """Write one possible post-power-loss state of every recorded file
        under ``dest`` (same relative paths).  Each unsynced change is kept
        with probability ``keep``; a kept write is torn (sectors kept at
        random) with probability ``tear``.  Returns how many changes were
        unsynced."""
        with self._lock:
            unsynced = 0
            for p, content in self.durable.items():
                data = bytearray(content)
                for op in self.pending[p]:
                    unsynced += 1
                    if rnd.random() >= keep:
                        continue
                    if op[0] == "t":
                        _truncate(data, op[1])
                    elif rnd.random() < tear:
                        _write_sectors(data, op[1], op[2], rnd)
                    else:
                        _write(data, op[1], op[2])
                out = os.path.join(dest, os.path.relpath(p, self.root))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out, "wb") as f:
                    f.write(data)
            return unsynced


def _write(data: bytearray, pos: int, chunk: bytes) -> None:
    if pos > len(data):
        data.extend(bytes(pos - len(data)))
    data[pos:pos + len(chunk)] = chunk


def _truncate(data: bytearray, length: int) -> None:
    if length < len(data):
        del data[length:]
    else:
        data.extend(bytes(length - len(data)))


def _write_sectors(data: bytearray, pos: int, chunk: bytes, rnd: random.Random) -> None:
    """A torn write: each 512-byte sector of it lands or not."""
    end = pos + len(chunk)
    s = pos - pos % SECTOR
    while s < end:
        a, b = max(s, pos), min(s + SECTOR, end)
        if rnd.random() < 0.5:
            _write(data, a, chunk[a - pos:b - pos])
        s += SECTOR


def _apply(content: bytearray, ops) -> bytearray:
    data = bytearray(content)
    for op in ops:
        if op[0] == "t":
            _truncate(data, op[1])
        else:
            _write(data, op[1], op[2])
    return data
