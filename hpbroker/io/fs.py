"""The file-syscall layer: every open/pwrite/fdatasync/... the engine makes.

The storage code never calls ``os`` directly for files it writes; it calls a
:class:`FileSystem`.  Tests pass a :class:`FaultyFileSystem` and make a
chosen call fail with a chosen errno (EIO on fdatasync, ENOSPC on pwrite...)
on the real files, the way a failing disk would.  It is a thin wrapper
around the real call, never a mock of the disk.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from dataclasses import dataclass, field


#: every file and directory a broker creates is its owner's alone (docs/security.md, "Local files")
FILE_MODE = 0o600
DIR_MODE = 0o700


class FileSystem:
    """Pass-through to the real syscalls."""

    def open(self, path: str, flags: int, mode: int = FILE_MODE) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, buf, pos: int) -> int:
        return os.pwrite(fd, buf, pos)

    def write(self, fd: int, buf) -> int:
        return os.write(fd, buf)

    def pread(self, fd: int, n: int, pos: int) -> bytes:
        return os.pread(fd, n, pos)

    def preadv(self, fd: int, bufs, pos: int) -> int:
        return os.preadv(fd, bufs, pos)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def write_all(self, fd: int, buf, pos: int | None = None) -> None:
        """Write every byte (loop over short writes); ``pos`` None = at the file offset."""
        mv = memoryview(buf).cast("B")
        done = 0
        n = mv.nbytes
        while done < n:
            if pos is None:
                k = self.write(fd, mv[done:])
            else:
                k = self.pwrite(fd, mv[done:], pos + done)
            if k <= 0:
                raise OSError(_errno.EIO, "write returned 0")
            done += k

    def truncate_file(self, path, length: int) -> None:
        """Cut the file ``path`` to ``length`` bytes and fsync it (recovery's
        torn tail, a slave's divergent tail)."""
        fd = self.open(path, os.O_WRONLY)
        try:
            self.ftruncate(fd, length)
            self.fsync(fd)
        finally:
            self.close(fd)

    def write_atomic(self, path, data) -> None:
        """Replace the file ``path`` with ``data``, so a crash leaves the old or the new file whole.

        ``path.tmp`` is written, fsynced and renamed over ``path``, then the
        directory is fsynced; every step is a call on this object, so a
        :class:`FaultyFileSystem` can fail any of them.  When a step before the
        rename fails, the tmp file is removed and the error raised: ``path``
        still holds its old content.  When the directory fsync fails, the
        error is raised too; the new content is then in place but maybe not
        durable yet.
        """
        path = os.fspath(path)
        tmp = path + ".tmp"
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            try:
                self.write_all(fd, data, 0)
                self.fsync(fd)
            finally:
                self.close(fd)
            self.rename(tmp, path)
        except BaseException:
            try:
                self.unlink(tmp)
            except OSError:
                pass  # the first error is the one to report
            raise
        self.fsync_dir(os.path.dirname(path) or ".")


@dataclass
class _Rule:
    op: str
    errno: int
    path: str | None
    skip: int
    times: int
    hits: int = field(default=0)


class FaultyFileSystem(FileSystem):
    """A :class:`FileSystem` whose calls can be made to fail on demand.

    ``fail("fdatasync", errno.EIO)`` makes the next fdatasync raise
    ``OSError(EIO)`` (after ``skip`` successful calls, ``times`` times, -1 =
    forever), optionally only for paths that hold ``path`` as whole
    components (``"t-0"`` matches ``.../t-0/x.log``, not ``.../pytest-0/...``,
    so a rule never depends on where a test's temporary directory is).  The real call
    is not made when a rule fires.  ``calls`` counts every call by name.
    """

    def __init__(self):
        self._rules: list[_Rule] = []
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def fail(self, op: str, errno: int = _errno.EIO, *, path: str | None = None, skip: int = 0, times: int = 1) -> None:
        with self._lock:
            self._rules.append(_Rule(op, errno, path, skip, times))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _check(self, op: str, path: str | None) -> None:
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            for r in self._rules:
                if r.op != op or r.times == 0:
                    continue
                if r.path is not None and (path is None or f"/{r.path.strip('/')}/" not in f"/{path.strip('/')}/"):
                    continue
                if r.skip > 0:
                    r.skip -= 1
                    continue
                if r.times > 0:
                    r.times -= 1
                r.hits += 1
                raise OSError(r.errno, f"injected {os.strerror(r.errno)} on {op}", path)

    def open(self, path, flags, mode=FILE_MODE):
        self._check("open", path)
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        return fd

    def close(self, fd):
        self._paths.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd, buf, pos):
        self._check("pwrite", self._paths.get(fd))
        return super().pwrite(fd, buf, pos)

    def write(self, fd, buf):
        self._check("write", self._paths.get(fd))
        return super().write(fd, buf)

    def fdatasync(self, fd):
        self._check("fdatasync", self._paths.get(fd))
        super().fdatasync(fd)

    def fsync(self, fd):
        self._check("fsync", self._paths.get(fd))
        super().fsync(fd)

    def ftruncate(self, fd, length):
        self._check("ftruncate", self._paths.get(fd))
        super().ftruncate(fd, length)

    def rename(self, src, dst):
        self._check("rename", src)
        super().rename(src, dst)

    def unlink(self, path):
        self._check("unlink", path)
        super().unlink(path)

    def fsync_dir(self, path):
        self._check("fsync_dir", path)
        super().fsync_dir(path)
