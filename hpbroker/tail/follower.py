"""Which files to read, and where: ``tail -F`` over globs, by polling.

A :class:`Follower` keeps one :class:`TrackedFile` per inode (``dev`` +
``ino``) that a source's globs named, holding it open so that a rename or a
delete never loses what is left to read.  :meth:`Follower.scan` (every
``poll_interval_ms``) looks at the globs and at every open file again:

* **a new inode** under a glob is followed: from its checkpoint when the
  checkpoint names it and its fingerprint still matches, else from the
  start (or, with ``start_at = "end"``, from the end for files that exist
  at the agent's first scan);
* **rename rotation** (``mv app.log app.log.1``, logrotate's ``create``):
  the old inode is renamed (path updated if the new name still matches a
  glob) or gone from the globs (``removed``); either way it is read on to
  its end through the open descriptor, before the new file in the reading
  order, and closed once it has been quiet for ``close_inactive_ms`` and
  all of it is acknowledged;
* **deleted**: the same as renamed away (``st_nlink == 0``);
* **truncation and copytruncate**: the size dropped below the read
  position, or the first bytes no longer match the fingerprint: reading
  restarts at 0 (a new *generation*, so acknowledgements of the old
  content no longer move the checkpoint).  logrotate's ``copytruncate``
  copies the file before truncating it; the copy is found by its
  fingerprint (under the globs, or in the same directory with a name that
  starts with the file's name) and read from where the original was left,
  so the lines between the last read and the copy are not lost, and the
  copy is not shipped twice;
* a checkpointed file renamed while the agent was down is looked for by
  inode in its old directory and read to its end.

No sockets, no shipping: :mod:`hpbroker.tail.shipper` reads the files in
:meth:`Follower.reading_order`.  Every notable event is reported through
``note(text)``.
"""

from __future__ import annotations

import glob as _glob
import os
import stat
from collections import deque
from typing import Callable

from hpbroker.tail.checkpoint import Entry, Fingerprint
from hpbroker.tail.config import Agent, Source

#: how long a file that looks like a copy of a live file waits for that file's truncation
#: (copytruncate) once the copy stopped growing, before it is taken as a file of its own
COPY_WAIT = 3.0
#: how long a truncation is remembered, for its copy to be found
TRUNCATION_MEMORY = 60.0
_OWN = "own"  # _copy_origin: not a copy


class TrackedFile:
    """One followed inode and the shipper's state for it."""

    def __init__(self, source: Source, dev: int, ino: int, path: str, fd: int, seq: int):
        self.source = source
        self.dev = dev
        self.ino = ino
        self.path = path
        self.first_path = path  # the default partition is a hash of it: stable across renames
        self.fd: int | None = fd
        self.seq = seq
        self.read_pos = 0  # everything before it has been handed to the shipper
        self.acked = 0  # everything before it is acknowledged (the checkpoint)
        self.gen = 0  # bumped at each truncation
        self.fp = Fingerprint(0, 0)
        self.size = 0  # st_size at the last look
        self.grew_at = 0.0  # monotonic time the size last grew (or the file was found)
        self.removed = False  # no longer under any glob: renamed away or deleted
        self.at_eof = False  # the last read found nothing more: wait for the next scan
        self.flush_tried = -1  # the size at which a read to flush what was kept back was last tried
        self.chunks: deque = deque()  # the shipper's chunks in flight, in file order
        self.partition: int | None = None  # the default partition (resolved by the shipper)

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def lag(self) -> int:
        return max(0, self.size - self.acked)

    def entry(self) -> Entry:
        return Entry(self.dev, self.ino, self.acked, self.fp.length, self.fp.crc, self.path, self.source.name)

    def __repr__(self) -> str:
        return f"<TrackedFile {self.path} ino={self.ino} read={self.read_pos} acked={self.acked} size={self.size}>"


def _open(path: str) -> tuple[int, os.stat_result] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def last_line_end(fd: int, size: int, window: int = 1 << 16) -> int:
    """The offset just after the last "\\n" before ``size`` (``start_at = "end"``:
    begin at a line start, never in the middle of a line)."""
    if size == 0:
        return 0
    n = min(window, size)
    data = os.pread(fd, n, size - n)
    i = data.rfind(b"\n")
    if i >= 0:
        return size - n + i + 1
    return 0 if n == size else size


class Follower:
    def __init__(self, agent: Agent, clock: Callable[[], float], note: Callable[[str], None] = lambda s: None):
        self.agent = agent
        self.sources = agent.sources
        self.by_name = {s.name: s for s in agent.sources}
        self.clock = clock
        self.note = note
        self.fp_bytes = agent.fingerprint_bytes
        self.files: dict[tuple[int, int], TrackedFile] = {}
        self._seq = 0
        self._restore: dict[tuple[int, int], Entry] = {}
        self._first = True
        self._deferred: dict[tuple[int, int], list] = {}  # possible copies: key -> [first seen, size, stable since]
        self._truncations: list[tuple[Fingerprint, int, float, TrackedFile]] = []  # (fp, old read_pos, when, file)

    # -- the agent's calls -----------------------------------------------------------

    def restore(self, entries: list[Entry]) -> None:
        """The checkpoint read at start; used by the first scan."""
        self._restore = {(e.dev, e.ino): e for e in entries}

    def scan(self) -> None:
        now = self.clock()
        seen = self._glob()
        for f in list(self.files.values()):
            self._check(f, seen.pop(f.key, None), now)
        self._truncations = [t for t in self._truncations if now - t[2] < TRUNCATION_MEMORY]
        for key in [k for k in self._deferred if k not in seen]:
            del self._deferred[key]
        for key, (path, src, st) in sorted(seen.items(), key=lambda kv: (kv[1][2].st_mtime, kv[1][0])):
            self._discover(key, path, src, st, now)
        if self._first:
            self._first = False
            self._find_renamed_while_down(now)
            self._restore = {}

    def reading_order(self) -> list[TrackedFile]:
        """Files renamed away or deleted first (they are older than
        whatever replaced them), then in the order they were found."""
        return sorted(self.files.values(), key=lambda f: (not f.removed, f.seq))

    def forget(self, f: TrackedFile) -> None:
        """Close and drop a drained file (the shipper decides when)."""
        if f.fd is not None:
            os.close(f.fd)
            f.fd = None
        self.files.pop(f.key, None)

    def close_all(self) -> None:
        for f in list(self.files.values()):
            if f.fd is not None:
                os.close(f.fd)
                f.fd = None

    def entries(self) -> list[Entry]:
        return [f.entry() for f in self.files.values()]

    # -- scanning -------------------------------------------------------------------

    def _glob(self) -> dict[tuple[int, int], tuple[str, Source, os.stat_result]]:
        seen: dict[tuple[int, int], tuple[str, Source, os.stat_result]] = {}
        for src in self.sources:
            for pattern in src.paths:
                for path in sorted(_glob.glob(os.path.expanduser(pattern), recursive=True)):
                    if src.file_rx is not None and not src.file_rx.search(os.path.basename(path)):
                        continue
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        seen.setdefault((st.st_dev, st.st_ino), (os.path.abspath(path), src, st))
        return seen

    def _check(self, f: TrackedFile, hit, now: float) -> None:
        """Renamed, removed, truncated, grown?"""
        try:
            st = os.fstat(f.fd)
        except OSError:
            return
        if hit is not None:
            path = hit[0]
            if f.removed or path != f.path:
                self.note(f"{f.path}: now {path}" if not f.removed else f"{path}: back under the paths")
            f.path, f.removed = path, False
        elif not f.removed:
            f.removed = True
            how = "deleted" if st.st_nlink == 0 else "renamed away or out of the paths"
            self.note(f"{f.path}: {how}; reading it to its end (inode {f.ino})")
        size = st.st_size
        if size < f.read_pos or (f.fp.length and not f.fp.matches(f.fd)):
            why = f"size {size} < position {f.read_pos}" if size < f.read_pos else "its first bytes changed"
            self._truncations.append((f.fp, f.read_pos, now, f))
            copy = self._find_copy(f, now)
            self.note(f"{f.path}: truncated ({why}); reading it again from 0"
                      + (f"; the rest of the old content from the copy {copy.path} at {copy.read_pos}" if copy else ""))
            f.gen += 1
            f.read_pos = f.acked = 0
            f.fp = Fingerprint.of(f.fd, self.fp_bytes, size)
            f.size = size
            f.grew_at = now
            f.at_eof = False
            return
        if size != f.size:
            if size > f.size:
                f.grew_at = now
            f.size = size
            f.at_eof = False
        if f.fp.length < self.fp_bytes and size > f.fp.length:
            f.fp = Fingerprint.of(f.fd, self.fp_bytes, size)

    def _discover(self, key, path: str, src: Source, st: os.stat_result, now: float) -> None:
        opened = _open(path)
        if opened is None:
            return
        fd, st = opened
        if (st.st_dev, st.st_ino) != key:  # replaced between stat and open: the next scan sees it
            os.close(fd)
            return
        size = st.st_size
        entry = self._restore.get(key)
        start = 0
        copy_of = None
        how = "from the start"
        if entry is not None and entry.source == src.name:
            if entry.offset <= size and Fingerprint(entry.fp_len, entry.fp_crc).matches(fd):
                start, how = entry.offset, f"from its checkpoint at {entry.offset}"
            else:
                how = "from the start (its checkpoint is for other content: truncated or the inode reused)"
        else:
            copy_of = self._copy_origin(key, fd, size, now)
            if copy_of is None:  # wait: maybe a copy being made, or one whose original is not truncated yet
                os.close(fd)
                return
            if copy_of is not _OWN:
                start, origin = copy_of
                how = f"at {start} (the copy of {origin.path}, truncated: the rest of its old content)"
            elif self._first and self.agent.start_at == "end":
                start, how = last_line_end(fd, size), "at its end (start_at = end)"
        f = TrackedFile(src, st.st_dev, st.st_ino, path, fd, self._seq)
        self._seq += 1
        if copy_of is not None and copy_of is not _OWN:
            f.first_path, f.partition = origin.first_path, origin.partition  # its order continues in one partition
            f.seq = origin.seq - 0.5  # the rest of the old content goes before the original's new content
        f.read_pos = f.acked = start
        f.size = size
        f.grew_at = now
        f.fp = Fingerprint.of(fd, self.fp_bytes, size)
        self.files[key] = f
        self.note(f"{path}: following {how}")

    # -- copytruncate ------------------------------------------------------------------

    def _copy_origin(self, key, fd: int, size: int, now: float):
        """For a new file: ``(offset, original)`` when it is the copy of a
        truncated file (start it where the original was left), ``_OWN``
        when it is a file of its own, None when it may be a copy whose
        original is not truncated yet (look again at the next scan)."""
        if size == 0:
            self._deferred.pop(key, None)
            return _OWN
        for fp, pos, _when, origin in reversed(self._truncations):
            if fp.length and size >= pos and fp.matches(fd):
                self._deferred.pop(key, None)
                return pos, origin
        live = [f for f in self.files.values() if not f.removed and f.fp.length and f.fd is not None]
        if not any(self._same_start(fd, size, f) for f in live):
            self._deferred.pop(key, None)
            return _OWN
        d = self._deferred.get(key)
        if d is None:
            self._deferred[key] = [now, size, now]
            return None
        if size != d[1]:
            d[1], d[2] = size, now
            return None
        if now - d[2] < COPY_WAIT:
            return None
        del self._deferred[key]
        return _OWN

    @staticmethod
    def _same_start(fd: int, size: int, f: TrackedFile) -> bool:
        """Does the new file begin as ``f`` does (over ``f``'s fingerprint,
        or over all of the new file when it is shorter)?"""
        n = min(size, f.fp.length)
        if n == f.fp.length:
            return f.fp.matches(fd)
        return os.pread(fd, n, 0) == os.pread(f.fd, n, 0)

    def _find_copy(self, f: TrackedFile, now: float) -> TrackedFile | None:
        """After ``f`` was truncated: its copy, in its directory under a name
        that starts with its own (logrotate's), not under the globs (those
        are found by the scan's discovery)."""
        if not f.fp.length:
            return None
        d, base = os.path.split(f.path)
        try:
            names = [e for e in os.scandir(d) if e.name.startswith(base) and e.name != base]
        except OSError:
            return None
        for e in names:
            try:
                st = e.stat()
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in self.files or not stat.S_ISREG(st.st_mode) or st.st_size < f.read_pos:
                continue
            opened = _open(e.path)
            if opened is None:
                continue
            fd, st = opened
            if not f.fp.matches(fd):
                os.close(fd)
                continue
            c = TrackedFile(f.source, st.st_dev, st.st_ino, e.path, fd, f.seq - 0.5)  # read before the original
            c.read_pos = c.acked = f.read_pos
            c.size = st.st_size
            c.grew_at = now
            c.fp = Fingerprint.of(fd, self.fp_bytes, st.st_size)
            c.first_path = f.first_path  # same partition as the original: its order continues
            c.partition = f.partition
            c.removed = True  # not under the globs: read to its end, then dropped
            self.files[key] = c
            self._deferred.pop(key, None)
            return c
        return None

    # -- the first scan: files renamed while the agent was down -------------------------------

    def _find_renamed_while_down(self, now: float) -> None:
        for key, e in self._restore.items():
            if key in self.files:
                continue
            src = self.by_name.get(e.source)
            d = os.path.dirname(e.path)
            if src is None:
                continue
            try:
                hits = [x for x in os.scandir(d) if x.inode() == e.ino and x.path != e.path]
            except OSError:
                continue
            for x in hits:
                opened = _open(x.path)
                if opened is None:
                    continue
                fd, st = opened
                if (st.st_dev, st.st_ino) != key or st.st_size <= e.offset \
                        or not Fingerprint(e.fp_len, e.fp_crc).matches(fd):
                    os.close(fd)
                    continue
                f = TrackedFile(src, st.st_dev, st.st_ino, x.path, fd, self._seq)
                self._seq += 1
                f.read_pos = f.acked = e.offset
                f.size = st.st_size
                f.grew_at = now
                f.fp = Fingerprint.of(fd, self.fp_bytes, st.st_size)
                f.first_path = e.path
                f.removed = True
                self.files[key] = f
                self.note(f"{e.path}: renamed to {x.path} while the agent was down; reading it from its "
                          f"checkpoint at {e.offset} to its end")
                break
