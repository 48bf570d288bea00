"""The stats block in shared memory: create, attach, unlink; one writer per slot.

Layout: :mod:`hpbroker.stats.layout`.  The supervisor :meth:`StatsBlock.create`s
it before its first child and unlinks it at stop; each process
:meth:`StatsBlock.attach`es and takes its own :class:`Slot`.  A slot's
methods are per request, per batch or per group-commit round, never per
message: a counter add is one memoryview store, a histogram observation a
``bisect`` and three stores.  None of them waits for anything.

The memory is passed in (``StatsBlock(buffer)``), so tests run the same
code over a ``bytearray``.
"""

from __future__ import annotations

from bisect import bisect_left
import mmap
import os
import time

import posix_ipc

from hpbroker.ring.liveness import is_alive, start_time
from hpbroker.stats import layout as L

SHM_DIR = "/dev/shm"


def segment_name(instance: str) -> str:
    return f"/hpb.{instance}.stats.v1"


class StatsBlock:
    """A view over a whole block in ``buf`` (an mmap, or a bytearray in tests)."""

    def __init__(self, buf, *, mm: mmap.mmap | None = None, name: str | None = None):
        self.buf = buf
        self._mm = mm
        self.name = name
        magic, version, slots, rows, words, pid, start, created = L.HEADER.unpack_from(buf, 0)
        if magic != L.MAGIC or version != L.VERSION:
            raise ValueError(f"not a version {L.VERSION} stats block (magic {magic!r}, version {version})")
        self.slots, self.rows, self.words = slots, rows, words
        self.owner_pid, self.owner_start, self.created_ns = pid, start, created
        self.names = [bytes(buf[L.HEADER.size + i * L.NAME_BYTES: L.HEADER.size + (i + 1) * L.NAME_BYTES])
                      .rstrip(b"\0").decode() for i in range(slots)]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.base = L.header_bytes(slots)

    @staticmethod
    def format(buf, names: list[str], rows: int, pid: int = 0, start: int = 0) -> None:
        """Write a fresh header for ``names`` into ``buf`` (zeroed, of
        :func:`layout.block_bytes` bytes)."""
        L.HEADER.pack_into(buf, 0, L.MAGIC, L.VERSION, len(names), rows, L.words_per_slot(rows), pid, start,
                           time.time_ns())
        for i, n in enumerate(names):
            raw = n.encode()[: L.NAME_BYTES]
            buf[L.HEADER.size + i * L.NAME_BYTES: L.HEADER.size + i * L.NAME_BYTES + len(raw)] = raw
        base = L.header_bytes(len(names))
        words = L.words_per_slot(rows)
        for i, n in enumerate(names):
            mv = memoryview(buf)[base + i * words * 8: base + (i + 1) * words * 8].cast("q")
            mv[1] = L.kind_of(n)

    @classmethod
    def over(cls, names: list[str], rows: int = 64) -> "StatsBlock":
        """A block in process memory (tests, and a broker part run without a supervisor)."""
        buf = bytearray(L.block_bytes(len(names), rows))
        cls.format(buf, names, rows)
        return cls(buf)

    @classmethod
    def create(cls, instance: str, names: list[str], rows: int) -> "StatsBlock":
        """Create the broker's block (unlinking one a killed broker of the same
        instance left: the caller holds the instance's data-dir lock and port)."""
        name = segment_name(instance)
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
        size = L.block_bytes(len(names), rows)
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            mm = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            raise
        pid = os.getpid()
        cls.format(mm, names, rows, pid, start_time(pid))
        block = cls(mm, mm=mm, name=name)
        block._fd = shm.fd  # kept open: a child started after the name is unlinked opens it through /proc
        return block

    @classmethod
    def attach(cls, instance: str, *, readonly: bool = False) -> "StatsBlock | None":
        """The running broker's block, or None when there is none."""
        name = segment_name(instance)
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_RDONLY if readonly else 0)
        except posix_ipc.ExistentialError:
            fd = _open_through_parent(name, readonly)  # the supervisor unlinked the name (kill -9 leaves nothing)
            if fd is None:
                return None
            try:
                mm = mmap.mmap(fd, os.fstat(fd).st_size, prot=prot)
            finally:
                os.close(fd)
        else:
            try:
                mm = mmap.mmap(shm.fd, shm.size, prot=prot)
            finally:
                shm.close_fd()
        try:
            return cls(mm, mm=mm, name=name)
        except ValueError:
            mm.close()
            return None

    def words_of(self, index: int) -> memoryview:
        """Slot ``index`` as int64 words (writable unless attached read-only)."""
        start = self.base + index * self.words * 8
        return memoryview(self.buf)[start: start + self.words * 8].cast("q")

    def slot(self, name: str) -> "Slot":
        return Slot(self.words_of(self.index[name]), self.rows)

    def set_pid(self, name: str, pid: int) -> None:
        """The supervisor's note of a child's pid (word 0; the child never writes it)."""
        i = self.index.get(name)
        if i is not None:
            self.words_of(i)[0] = pid

    def owner_alive(self) -> bool:
        return is_alive(self.owner_pid, self.owner_start)

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a reader still holds a view; the mapping goes with the process
                pass
            self._mm = None

    def unlink(self) -> None:
        if self.name is not None:
            try:
                posix_ipc.unlink_shared_memory(self.name)
            except posix_ipc.ExistentialError:
                pass


def _open_through_parent(name: str, readonly: bool) -> int | None:
    """An fd of segment ``name`` through the parent's open fd to it, once
    its name is unlinked (a process started after that: the HTTP process,
    or its restart).  The supervisor keeps every segment's fd open."""
    want = os.path.join(SHM_DIR, name.lstrip("/")) + " (deleted)"
    base = f"/proc/{os.getppid()}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return None
    for n in fds:
        try:
            if os.readlink(os.path.join(base, n)) == want:
                return os.open(os.path.join(base, n), os.O_RDONLY if readonly else os.O_RDWR)
        except OSError:
            continue
    return None


def cleanup_stale(instance: str) -> bool:
    """Unlink ``instance``'s block when the supervisor that made it is dead
    (a broker killed with -9).  True when one was removed."""
    b = StatsBlock.attach(instance, readonly=True)
    if b is None:
        path = os.path.join(SHM_DIR, segment_name(instance).lstrip("/"))
        if os.path.exists(path):  # not a block we can read: a torn create
            os.unlink(path)
            return True
        return False
    try:
        if b.owner_alive():
            return False
        b.unlink()
        return True
    finally:
        b.close()


class Slot:
    """One process's slot: the only writer of its words (word 0 aside)."""

    def __init__(self, words: memoryview, rows: int):
        self.w = words
        self.rows = rows
        self._row_of: dict[tuple[str, int], int] = {}
        # per histogram: (scale, first bucket's word, bounds in stored units, the sum's word)
        self._hist = [(h.scale, at, h.unit_bounds, at + len(h.bounds) + 1) for h, at in zip(L.HISTOGRAMS, L.HISTOGRAM_AT)]
        self._beat_due = 0
        words[3] = time.time_ns()
        words[2] = words[3]

    # -- per request / batch / round ---------------------------------------------------

    def add(self, counter: int, n: int = 1) -> None:
        """``counter``: a word index from ``layout.COUNTER``."""
        self.w[counter] += n

    def set(self, gauge: int, value: int) -> None:
        self.w[gauge] = value

    def reply(self, kind: int, code: int) -> None:
        """One reply of request kind ``kind`` (REQUEST_KINDS index) with ``code``."""
        self.w[L.REQUESTS_AT + kind * L.CODE_SLOTS + (code if 0 <= code < 63 else 63)] += 1

    def observe(self, hist: int, value: float) -> None:
        """``value`` in the histogram's unit (seconds, bytes, batches)."""
        scale, at, bounds, total = self._hist[hist]
        v = int(value * scale)
        w = self.w
        w[at + bisect_left(bounds, v)] += 1
        w[total] += v
        w[total + 1] += 1

    def beat(self, now_ns: int | None = None) -> None:
        """Stamp the heartbeat (readers call a process whose beat is old stuck)."""
        self.w[2] = time.time_ns() if now_ns is None else now_ns

    # -- partition rows ---------------------------------------------------------------------

    def row(self, topic: str, partition: int) -> int:
        """The word index of (topic, partition)'s row in this slot, taken at
        first use; -1 when every row is taken (counted in ``rows_full``)."""
        tp = (topic, partition)
        at = self._row_of.get(tp)
        if at is None:
            n = len(self._row_of)
            if n >= self.rows:
                self.w[L.COUNTER["rows_full"]] += 1
                return -1
            at = L.ROWS_AT + n * L.ROW_WORDS
            self.w[at] = L.partition_key(topic, partition)  # the rest is still zero: a new row
            self._row_of[tp] = at
        return at

    def row_add(self, topic: str, partition: int, field: int, n: int) -> None:
        at = self.row(topic, partition)
        if at >= 0:
            self.w[at + field] += n


class NullSlot(Slot):
    """A slot over private memory: for a process started without a block."""

    def __init__(self, rows: int = 256):
        super().__init__(memoryview(bytearray(L.words_per_slot(rows) * 8)).cast("q"), rows)


def reclaim_dead(*, skip: str | None = None, grace_s: float = 60.0) -> list[str]:
    """Unlink the block of every instance (but ``skip``) whose supervisor is
    dead (a broker killed -9 while it started, before it unlinked its
    names), and unreadable blocks older than ``grace_s``.  Returns the names
    removed.  A broker runs it at start, as it does for rings."""
    removed = []
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for entry in entries:
        if not (entry.startswith("hpb.") and entry.endswith(".stats.v1")):
            continue
        instance = entry[len("hpb."):-len(".stats.v1")]
        if instance == skip or not instance or "." in instance:
            continue
        path = os.path.join(SHM_DIR, entry)
        try:
            b = StatsBlock.attach(instance, readonly=True)
        except (OSError, ValueError):
            b = None
        if b is None:
            try:
                if time.time() - os.stat(path).st_mtime < grace_s:
                    continue
            except OSError:
                continue
        else:
            try:
                if b.owner_alive():
                    continue
            finally:
                b.close()
        try:
            os.unlink(path)
            removed.append("/" + entry)
        except OSError:
            pass
    return removed
