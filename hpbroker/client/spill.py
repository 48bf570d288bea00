"""The producer's spill journal: messages it could not hand to the broker yet.

MetaQ's asynchronous producer kept what overflowed its window in
``~/.meta_async_storage``, and its ordered producer kept what an unavailable
partition could not take in ``~/.meta_localmessage``, both re-sent later.
:class:`SpillJournal` is that store for hpbroker's Producer (docs/client.md,
"Spilling to disk"): one directory, ``spill_dir``, owned by one producer at
a time, holding

* ``LOCK``: ``fcntl.flock``-ed while a producer has the directory open, so
  two producers never share one (:class:`~hpbroker.client.framing.JournalLocked`
  names the holder's pid);
* ``<first seq, 20 digits>.spill``: append-only segment files, rolled at
  ``segment_bytes``.

Every spilled message gets a *sequence number* (seq): 0, 1, 2, ... over the
whole journal, never reused.  It is implicit: the file name says the seq of
a segment's first record, and each record frame after it takes the next one.
Acknowledgements are frames in the same stream, so one ``fdatasync`` covers a
group of spilled messages and the acknowledgements that came with them.

Frames and records
------------------

Each segment is a sequence of :mod:`~hpbroker.client.framing` frames.  A
frame holds a record (kind ``R``: a message, in send order; ``F``: a
message put back at ``close()``, see "Order" below) or an acknowledgement
(kind ``A``): the records it lists were acknowledged by the broker (or
failed for good) and are never re-sent.  Their byte layouts are drawn in
:mod:`hpbroker.client.spill_format`, with the code that writes and reads
them.

The acknowledgement cursor is therefore the set of acknowledged seqs, kept
in memory as one flag per record of each segment and rebuilt at open from
the ``A`` frames.  A set, not one number: partitions are re-sent and
acknowledged independently, and a message spilled before the partition
count was known lands wherever the partitioner sends it.

Order.  The journal's own order is send order.  The producer re-sends a
partition's records in seq order, except the ``F`` records: those are the
messages a closing producer still held in memory, older than anything its
partition has in the journal, so they go first (their partition cannot have
had newer in-memory messages meanwhile: while it has records here, the
producer spills every new message of it).

Opening
-------

Every segment is read and every frame's CRC checked; a torn tail of the
last segment is cut, anything else raises
:class:`~hpbroker.client.framing.JournalCorrupt` and drops nothing
(:mod:`hpbroker.client.spill_open`).

Segments
--------

A segment is deleted (and the directory fsynced) once every record in it,
and in every segment before it, is acknowledged; the last segment is rolled
over first when it is fully acknowledged and at least ``segment_bytes / 16``
long.  Deleting only in order keeps every acknowledgement frame that
mentions a live record: an ``A`` frame only ever names records written
before it.

Durability.  :meth:`SpillJournal.write` is one ``pwrite`` of a group of
frames and one ``fdatasync``; a failure of either cuts the file back to
where the group began and raises, so the caller still holds the group and
can try again.  A segment is rolled over only after its last write was
synced, so an earlier segment never ends in a torn frame.

Threads: the journal is not thread-safe; the producer calls it from its
spill thread only (and at open and close).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from hpbroker.client import framing
from hpbroker.client.framing import FRAME_HEADER, JournalCorrupt, JournalError
# the frames' names, as the producer, its sender and spiller and tests/ import them from here
from hpbroker.client.spill_format import (KIND_ACK, KIND_FRONT, KIND_RECORD, SpillRecord,  # noqa: F401
                                          _LEN, encode_ack, encode_record, parse_records, record_size)
from hpbroker.client.spill_open import open_segments
from hpbroker.client.spill_segment import Segment, mark_acked, segment_path

log = logging.getLogger("hpbroker.client")

#: segments roll over at this size (MetaQ's JournalStore used 64 MB files)
DEFAULT_SEGMENT_BYTES = 64 << 20

_READ_CHUNK = 1 << 20  # the read cache's size


class ReadPosition:
    """Where :meth:`SpillJournal.read` goes on: a segment (by its first seq),
    a byte offset in it, and the seq of the next record frame there."""

    __slots__ = ("base", "offset", "seq")

    def __init__(self, base: int, offset: int = 0, seq: int | None = None):
        self.base = base
        self.offset = offset
        self.seq = base if seq is None else seq

    def __repr__(self) -> str:
        return f"ReadPosition(base={self.base}, offset={self.offset}, seq={self.seq})"


class SpillJournal:
    def __init__(self, directory: str | os.PathLike, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES):
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes must be at least 4096, got {segment_bytes}")
        self.directory = Path(directory).expanduser()
        self.segment_bytes = segment_bytes
        self.segments: list[Segment] = []
        self.next_seq = 0
        self.front: list[SpillRecord] = []  # F records not acknowledged, in file order
        self.pending: dict[tuple[str, int], int] = {}  # at open: unacknowledged records by (topic, stored partition)
        self.recovered = 0  # unacknowledged records found at open
        self.truncated_bytes = 0  # a torn tail cut at open
        self.syncs = 0
        self._fd = -1  # the last segment's, for writing
        self._read_fd: tuple[int, int] | None = None  # (segment base, fd) of the segment being read
        self._rcache: tuple[int, int, bytes] | None = None  # (segment base, offset, bytes) last read
        self._names: dict[bytes, str] = {}
        self._failed: BaseException | None = None
        self._lock_fd = -1
        framing.make_dirs(self.directory)
        self._lock_fd = framing.lock(self.directory / "LOCK", f"spill journal {self.directory}")
        try:
            self._open()
        except BaseException:
            self._close_fds()
            raise

    # -- writing -------------------------------------------------------------------------

    def write(self, records: Iterable[tuple], acks: list[int] | None = None) -> int:
        """Append ``records`` - ``(front, topic, partition, key, value,
        headers, timestamp)`` each, taking seqs from :attr:`next_seq` on - and
        one acknowledgement frame for the seqs in ``acks``, in one ``pwrite``,
        then ``fdatasync``.  On any failure the file is cut back to where it
        was and the error raised: nothing of the group counts as written.
        Returns the number of records written."""
        frames = [encode_record(*r) for r in records]
        return self.write_frames(frames, acks)

    def write_frames(self, frames: list, acks: list[int] | None = None) -> int:
        """:meth:`write` for records already framed by :func:`encode_record`
        (the producer frames each message in ``send()``, so its spill thread
        only joins bytes)."""
        self._check_usable()
        seg = self.segments[-1]
        if acks:
            frames = frames + [encode_ack(acks)]
        if not frames:
            return 0
        buf = b"".join(frames)
        n = len(frames) - (1 if acks else 0)
        try:
            framing.write_all(self._fd, buf, seg.size)
            os.fdatasync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, seg.size)
            except OSError:
                self._failed = e  # a partial group may sit before later writes: stop
            raise
        self.syncs += 1
        seg.size += len(buf)
        seg.grow(n)
        self.next_seq += n
        if acks:
            self.ack(acks)
        if seg.size >= self.segment_bytes:
            self._roll()
        return n

    def ack(self, seqs) -> int:
        """Flag ``seqs`` acknowledged in memory (their ``A`` frame went to
        :meth:`write`), drop them from :attr:`pending` and :attr:`front`,
        and delete the segments that are now wholly acknowledged.  Returns
        how many were newly acknowledged."""
        arr = np.sort(np.asarray(seqs, dtype=np.int64))
        if not len(arr):
            return 0
        new = mark_acked(self.segments, arr)
        if self.front:
            gone = set(arr.tolist())
            self.front = [r for r in self.front if r.seq not in gone]
        self._collect()
        return new

    @property
    def disk_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def _check_usable(self) -> None:
        if self._fd < 0:
            raise JournalError(f"spill journal {self.directory} is closed")
        if self._failed is not None:
            raise JournalError(f"spill journal {self.directory} failed a write and could not cut it back "
                               f"({self._failed}); reopen it to see what is on disk") from self._failed

    def _roll(self) -> None:
        """Start a new segment at :attr:`next_seq` (the last one was synced)."""
        seg = Segment(self.next_seq, segment_path(self.directory, self.next_seq))
        fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            framing.fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            os.unlink(seg.path)
            raise
        os.close(self._fd)
        self._fd = fd
        self.segments.append(seg)

    def _collect(self) -> None:
        """Delete wholly acknowledged segments, oldest first, and roll the last
        one over first when it is done and large enough to be worth it."""
        last = self.segments[-1]
        if last.done and last.count and last.size >= self.segment_bytes // 16 and self._failed is None:
            try:
                self._roll()
            except OSError as e:
                log.warning("spill journal %s: could not roll a segment over: %s", self.directory, e)
        gone = 0
        while len(self.segments) > 1 and self.segments[0].done:
            seg = self.segments.pop(0)
            if self._read_fd is not None and self._read_fd[0] == seg.base:
                os.close(self._read_fd[1])
                self._read_fd = None
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
            gone += 1
        if gone:
            try:
                framing.fsync_dir(self.directory)
            except OSError as e:
                log.warning("spill journal %s: fsync of the directory after deleting segments: %s", self.directory, e)

    # -- reading -------------------------------------------------------------------------

    def start(self) -> ReadPosition:
        """Where reading the unacknowledged ``R`` records begins."""
        return ReadPosition(self.segments[0].base)

    def read(self, pos: ReadPosition, max_bytes: int) -> list[SpillRecord]:
        """The unacknowledged ``R`` records from ``pos`` on, about
        ``max_bytes`` of them (at least one when there is one), in seq order;
        ``pos`` moves past them.  ``F`` records are in :attr:`front` (read at
        open), acknowledgement frames are skipped.  A frame that no longer
        checks out raises :class:`JournalCorrupt`."""
        out: list[SpillRecord] = []
        got = 0
        while got < max_bytes or not out:
            seg = self._segment_at(pos)
            if seg is None:
                return out
            if pos.offset >= seg.size:
                if seg is self.segments[-1]:
                    return out
                nxt = self.segments[self.segments.index(seg) + 1]
                pos.base, pos.offset, pos.seq = nxt.base, 0, nxt.base
                continue
            c = self._rcache
            if c is None or c[0] != seg.base or not c[1] <= pos.offset < c[1] + len(c[2]):
                c = self._fill(seg, pos.offset, _READ_CHUNK)
            start = pos.offset - c[1]
            at, got = parse_records(c[2], start, pos, seg, out, got, max_bytes, self._names)
            if at == start:  # the frame at pos runs past the cached bytes: read it whole
                length = _LEN.unpack_from(c[2], start)[0] if len(c[2]) - start >= 4 else 0
                if pos.offset + FRAME_HEADER + length > seg.size or len(c[2]) - start >= FRAME_HEADER + length:
                    raise JournalCorrupt(f"spill journal {seg.path}: no whole frame at offset {pos.offset}")
                c = self._fill(seg, pos.offset, max(_READ_CHUNK, FRAME_HEADER + length))
                at, got = parse_records(c[2], 0, pos, seg, out, got, max_bytes, self._names)
                start = 0
            pos.offset += at - start
        return out

    def _fill(self, seg: Segment, offset: int, size: int) -> tuple[int, int, bytes]:
        """Read up to ``size`` bytes of ``seg`` from ``offset`` into the read
        cache (one ``pread`` per MiB, not per step: each blocking call gives
        the GIL away, and getting it back can take a switch interval)."""
        data = os.pread(self._reader_fd(seg), min(seg.size - offset, size), offset)
        self._rcache = (seg.base, offset, data)
        return self._rcache

    def _segment_at(self, pos: ReadPosition) -> Segment | None:
        segs = self.segments
        if segs and pos.base < segs[0].base:  # the segment was deleted: all of it was acknowledged
            pos.base, pos.offset, pos.seq = segs[0].base, 0, segs[0].base
        for s in segs:
            if s.base == pos.base:
                return s
        return None

    def _reader_fd(self, seg: Segment) -> int:
        if self._read_fd is not None:
            if self._read_fd[0] == seg.base:
                return self._read_fd[1]
            os.close(self._read_fd[1])
            self._read_fd = None
        fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        self._read_fd = (seg.base, fd)
        return fd

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        open_segments(self)  # spill_open.py: the segments read back, checked, and counted

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        self._close_fds()

    def _close_fds(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd[1])
            self._read_fd = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> "SpillJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SpillJournal({str(self.directory)!r}, segments={len(self.segments)}, "
                f"next_seq={self.next_seq}, pending={sum(self.pending.values())})")
