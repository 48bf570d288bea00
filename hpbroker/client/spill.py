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

Each segment is a sequence of :mod:`~hpbroker.client.framing` frames
(``[u32 length][u32 CRC32C of the length and the payload][payload]``).  A
payload starts with its kind.  Records (kind ``R``, or ``F``), integers
little-endian:

=======  ===========  ============  ==========================================
offset   size         field         notes
=======  ===========  ============  ==========================================
0        1            kind          ``0x52`` ``R``: a message, in send order;
                                    ``0x46`` ``F``: a message put back at
                                    ``close()`` (see below)
1        1            flags         bit 0: the message has a key; others zero
2        2            topic_len     uint16, bytes of the topic's UTF-8
4        4            partition     int32; -1: not chosen yet (no metadata
                                    when it was spilled; chosen at re-send by
                                    the producer's partitioner)
8        8            timestamp     int64, ms since the epoch (the send time)
16       4            key_len       uint32, 0 when there is no key
20       4            headers_len   uint32, 0 for no headers
24       topic_len    topic         UTF-8
..       key_len      key
..       headers_len  headers       the record headers bytes of the batch
                                    format (docs/protocol.md)
..       the rest     value         up to the end of the payload
=======  ===========  ============  ==========================================

Acknowledgements (kind ``A``): the records listed were acknowledged by the
broker (or failed for good) and are never re-sent:

=======  ==========  ============  ==========================================
offset   size        field         notes
=======  ==========  ============  ==========================================
0        1           kind          ``0x41`` ``A``
1        3           reserved      zero
4        4           count         uint32, >= 1
8        8           base          int64, a seq
16       4 x count   deltas        uint32 each: seq = base + delta
=======  ==========  ============  ==========================================

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

Every segment is read and every frame's CRC checked.  A bad frame at the end
of the *last* segment, with no valid frame after it, is a torn tail (a write
a crash interrupted, never made durable): the file is cut there, the cut
fsynced, a warning logged.  Anything else - a bad frame followed by a valid
one, a bad frame in an earlier segment, a good CRC over a record that does
not parse, a segment missing between two others - raises
:class:`~hpbroker.client.framing.JournalCorrupt` naming the file and the
offset, and nothing is dropped.  Opening reads everything once: about 2 s
per million spilled messages on the test VM (docs/performance.md).

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
import re
import struct
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
from crc32c import crc32c

from hpbroker.client import framing
from hpbroker.client.framing import FRAME_HEADER, MAX_FRAME, FrameScan, JournalCorrupt, JournalError

log = logging.getLogger("hpbroker.client")

KIND_RECORD = 0x52  # "R"
KIND_FRONT = 0x46  # "F"
KIND_ACK = 0x41  # "A"

#: segments roll over at this size (MetaQ's JournalStore used 64 MB files)
DEFAULT_SEGMENT_BYTES = 64 << 20

_REC = struct.Struct("<BBHiqII")
_ACK = struct.Struct("<B3xIq")
_LEN = struct.Struct("<I")
_NAME = re.compile(r"^(\d{20})\.spill$")
_READ_CHUNK = 1 << 20  # the read cache's size


class SpillRecord(NamedTuple):
    """One spilled message as the journal holds it."""

    seq: int
    topic: str
    partition: int  # -1: not chosen yet
    key: bytes | None
    value: bytes
    headers: bytes | None  # the batch format's encoded headers
    timestamp: int  # ms since the epoch
    front: bool = False  # an F record: goes before its partition's R records


def record_size(topic: bytes, key: bytes | None, value: bytes, headers: bytes | None) -> int:
    """The bytes one record takes in a segment, frame included."""
    return FRAME_HEADER + _REC.size + len(topic) + (0 if key is None else len(key)) + len(value) + \
        (0 if headers is None else len(headers))


_topic_bytes: dict[str, bytes] = {}


def encode_record(front: bool, topic: str, partition: int, key: bytes | None, value: bytes, headers: bytes | None,
                  timestamp: int) -> bytes:
    """One record frame (the tables above).  ValueError for a topic or a
    message that does not fit one."""
    tb = _topic_bytes.get(topic)
    if tb is None:
        tb = topic.encode("utf-8")
        if len(tb) > 0xFFFF:
            raise ValueError(f"topic name of {len(tb)} bytes does not fit a spill record")
        if len(_topic_bytes) < 4096:
            _topic_bytes[topic] = tb
    hl = 0 if headers is None else len(headers)
    if key is None:
        payload = b"".join((_REC.pack(KIND_FRONT if front else KIND_RECORD, 0, len(tb), partition, timestamp, 0, hl),
                            tb, headers or b"", value))
    else:
        payload = b"".join((_REC.pack(KIND_FRONT if front else KIND_RECORD, 1, len(tb), partition, timestamp,
                                      len(key), hl), tb, key, headers or b"", value))
    n = len(payload)
    if n > MAX_FRAME:
        raise ValueError(f"a message of {n} bytes is larger than a spill frame may be")
    head = _LEN.pack(n)
    return b"".join((head, _LEN.pack(crc32c(payload, crc32c(head))), payload))


def _encode_ack(seqs) -> bytes:
    arr = np.asarray(seqs, dtype=np.int64)
    base = int(arr.min())
    deltas = arr - base
    if int(deltas.max()) > 0xFFFFFFFF:  # split a range wider than a uint32 (never in practice)
        cut = arr < base + 0xFFFFFFFF
        return _encode_ack(arr[cut]) + _encode_ack(arr[~cut])
    return framing.frame(_ACK.pack(KIND_ACK, len(arr), base) + deltas.astype("<u4").tobytes())


class _Segment:
    """One segment file: its first seq, its durable size, its records'
    acknowledgement flags."""

    __slots__ = ("base", "path", "size", "count", "acked", "nacked")

    def __init__(self, base: int, path: Path, size: int = 0):
        self.base = base
        self.path = path
        self.size = size
        self.count = 0
        self.acked = np.zeros(1024, dtype=bool)  # capacity grows; [0, count) is meaningful
        self.nacked = 0

    def grow(self, n: int) -> None:
        need = self.count + n
        if need > len(self.acked):
            bigger = np.zeros(max(need, 2 * len(self.acked)), dtype=bool)
            bigger[: self.count] = self.acked[: self.count]
            self.acked = bigger
        self.count = need

    def mark(self, idx: np.ndarray) -> int:
        """Flag records ``idx`` (relative to base) acknowledged; return how many were new."""
        new = int(np.count_nonzero(~self.acked[idx]))
        self.acked[idx] = True
        self.nacked += new
        return new

    @property
    def done(self) -> bool:
        return self.nacked >= self.count

    @property
    def end(self) -> int:
        return self.base + self.count


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
        self.segments: list[_Segment] = []
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
            frames = frames + [_encode_ack(acks)]
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
        new = 0
        if not len(arr):
            return 0
        bases = np.array([s.base for s in self.segments], dtype=np.int64)
        where = np.searchsorted(bases, arr, side="right") - 1
        for i in np.unique(where).tolist():
            if i < 0:
                continue  # acknowledged in a segment deleted already
            seg = self.segments[i]
            rel = arr[where == i] - seg.base
            rel = rel[rel < seg.count]
            new += seg.mark(rel)
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
        seg = _Segment(self.next_seq, self.directory / f"{self.next_seq:020d}.spill")
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
            at, got = self._parse(c[2], start, pos, seg, out, got, max_bytes)
            if at == start:  # the frame at pos runs past the cached bytes: read it whole
                length = _LEN.unpack_from(c[2], start)[0] if len(c[2]) - start >= 4 else 0
                if pos.offset + FRAME_HEADER + length > seg.size or len(c[2]) - start >= FRAME_HEADER + length:
                    raise JournalCorrupt(f"spill journal {seg.path}: no whole frame at offset {pos.offset}")
                c = self._fill(seg, pos.offset, max(_READ_CHUNK, FRAME_HEADER + length))
                at, got = self._parse(c[2], 0, pos, seg, out, got, max_bytes)
                start = 0
            pos.offset += at - start
        return out

    def _fill(self, seg: _Segment, offset: int, size: int) -> tuple[int, int, bytes]:
        """Read up to ``size`` bytes of ``seg`` from ``offset`` into the read
        cache (one ``pread`` per MiB, not per step: each blocking call gives
        the GIL away, and getting it back can take a switch interval)."""
        data = os.pread(self._reader_fd(seg), min(seg.size - offset, size), offset)
        self._rcache = (seg.base, offset, data)
        return self._rcache

    def _parse(self, buf: bytes, start: int, pos: ReadPosition, seg: _Segment, out: list, got: int,
               max_bytes: int) -> tuple[int, int]:
        """The frames of ``buf`` from index ``start`` (at ``pos`` in the
        file): unacknowledged R records appended to ``out``; returns (the
        index after the last whole frame used, bytes of records so far).
        The per-record path of every re-send, so it is written flat: bytes
        slices of ``buf``, no call per record.  The CRCs are not checked
        again: every frame was checked at open or written by this process
        (checking them here cost about a sixth of a re-send's CPU)."""
        n = len(buf)
        at = start
        head = _LEN.unpack_from
        rec = _REC.unpack_from
        names = self._names
        acked = seg.acked
        base = seg.base
        new = tuple.__new__
        while at + FRAME_HEADER <= n:
            length = head(buf, at)[0]
            end = at + FRAME_HEADER + length
            if end > n:
                break
            if length < 1 or length < _REC.size and buf[at + FRAME_HEADER] != KIND_ACK:
                raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos.offset + at - start} "
                                     f"has a length ({length}) no record can have")
            kind = buf[at + FRAME_HEADER]
            if kind == KIND_RECORD or kind == KIND_FRONT:
                seq = pos.seq
                pos.seq = seq + 1
                if kind == KIND_RECORD and not acked[seq - base]:
                    o = at + FRAME_HEADER
                    _, flags, tl, partition, ts, kl, hl = rec(buf, o)
                    o += _REC.size
                    if o + tl + kl + hl > end or flags & ~1:
                        raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos.offset + at - start} "
                                             "has a good CRC but its record does not parse (its lengths do not add up)")
                    tb = buf[o : o + tl]
                    topic = names.get(tb)
                    if topic is None:
                        topic = names[tb] = self._topic_name(tb, seg, pos.offset + at - start)
                    o += tl
                    key = buf[o : o + kl] if flags else None
                    o += kl
                    headers = buf[o : o + hl] if hl else None
                    out.append(new(SpillRecord, (seq, topic, partition, key, buf[o + hl : end], headers, ts, False)))
                    got += length
            at = end
            if got >= max_bytes and out:
                break
        return at, got

    def _segment_at(self, pos: ReadPosition) -> _Segment | None:
        segs = self.segments
        if segs and pos.base < segs[0].base:  # the segment was deleted: all of it was acknowledged
            pos.base, pos.offset, pos.seq = segs[0].base, 0, segs[0].base
        for s in segs:
            if s.base == pos.base:
                return s
        return None

    def _reader_fd(self, seg: _Segment) -> int:
        if self._read_fd is not None:
            if self._read_fd[0] == seg.base:
                return self._read_fd[1]
            os.close(self._read_fd[1])
            self._read_fd = None
        fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        self._read_fd = (seg.base, fd)
        return fd

    @staticmethod
    def _topic_name(tb: bytes, seg: _Segment, offset: int) -> str:
        try:
            return tb.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {offset} has a good CRC but its "
                                 f"topic is not UTF-8 ({e})") from None

    def _decode(self, p: memoryview, seq: int, seg: _Segment, offset: int) -> SpillRecord:
        try:
            kind, flags, tl, partition, ts, kl, hl = _REC.unpack_from(p, 0)
            o = _REC.size
            if o + tl + kl + hl > len(p) or flags & ~1 or (kl and not flags & 1):
                raise ValueError("its lengths do not add up")
            tb = bytes(p[o : o + tl])
            topic = self._names.get(tb)
            if topic is None:
                topic = self._names[tb] = tb.decode("utf-8")
            o += tl
            key = bytes(p[o : o + kl]) if flags & 1 else None
            o += kl
            headers = bytes(p[o : o + hl]) if hl else None
            o += hl
            return SpillRecord(seq, topic, partition, key, bytes(p[o:]), headers, ts, kind == KIND_FRONT)
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {offset} has a good CRC but its "
                                 f"record does not parse ({e}); written by another version?") from None

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        found = []
        for name in os.listdir(self.directory):
            m = _NAME.match(name)
            if m:
                found.append(int(m.group(1)))
            elif name.endswith(".spill"):
                raise JournalCorrupt(f"spill journal {self.directory}: {name} is not a segment name this version "
                                     "writes; move it aside")
        found.sort()
        if not found:
            seg = _Segment(0, self.directory / f"{0:020d}.spill")
            self._fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            framing.fsync_dir(self.directory)
            self.segments.append(seg)
            return
        acks: list[np.ndarray] = []
        key_ids: dict[tuple[bytes, int], int] = {}  # (topic bytes, partition) -> a small id
        first_at: list[tuple[_Segment, int]] = []  # where each key was first seen (for an error)
        per_segment_keys: list[np.ndarray] = []
        fronts: list[SpillRecord] = []
        for i, base in enumerate(found):
            seg = _Segment(base, self.directory / f"{base:020d}.spill")
            last = i == len(found) - 1
            if self.segments and base != self.segments[-1].end:
                prev = self.segments[-1]
                raise JournalCorrupt(f"spill journal {seg.path}: starts at record {base}, but {prev.path} ends at "
                                     f"record {prev.end}: a segment is missing or was cut; nothing was dropped")
            with open(seg.path, "rb") as f:
                buf = f.read()  # one segment at a time: at most segment_bytes (plus one group) in memory
            ids = []
            scan = FrameScan(buf, f"spill journal {seg.path}", tail_ok=last)
            rec = _REC.unpack_from
            for pos, payload in scan:
                kind = payload[0]
                if kind == KIND_RECORD or kind == KIND_FRONT:
                    try:
                        _, flags, tl, partition, _, kl, hl = rec(buf, pos + FRAME_HEADER)
                    except struct.error:
                        flags = -1
                    o = pos + FRAME_HEADER + _REC.size
                    if flags & ~1 or o + tl + kl + hl > pos + FRAME_HEADER + len(payload):
                        self._key_of(payload, seg, pos)  # raises, saying what is wrong
                    k = (buf[o : o + tl], partition)
                    kid = key_ids.get(k)
                    if kid is None:
                        kid = key_ids[k] = len(key_ids)
                        first_at.append((seg, pos))
                    ids.append(kid)
                    if kind == KIND_FRONT:
                        fronts.append(self._decode(payload, seg.base + len(ids) - 1, seg, pos))
                elif kind == KIND_ACK and len(payload) >= _ACK.size:
                    _, count, abase = _ACK.unpack_from(payload, 0)
                    if len(payload) != _ACK.size + 4 * count:
                        raise JournalCorrupt(f"spill journal {seg.path}: the acknowledgement frame at offset {pos} "
                                             "has a good CRC but the wrong size")
                    acks.append(abase + np.frombuffer(payload, dtype="<u4", offset=_ACK.size).astype(np.int64))
                else:
                    raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos} has a good CRC but an "
                                         f"unknown kind {kind:#04x}; written by another version?")
            seg.size = scan.end
            seg.grow(len(ids))
            per_segment_keys.append(np.array(ids, dtype=np.int64))
            if scan.end < len(buf):
                log.warning("spill journal %s: cut a torn tail of %d bytes at offset %d (%s; a write a crash "
                            "interrupted, never made durable)", seg.path, len(buf) - scan.end, scan.end, scan.why)
                with open(seg.path, "r+b") as f:
                    f.truncate(scan.end)
                    os.fsync(f.fileno())
                self.truncated_bytes = len(buf) - scan.end
            self.segments.append(seg)
        self.next_seq = self.segments[-1].end
        self._fd = os.open(self.segments[-1].path, os.O_RDWR | os.O_CLOEXEC)
        for arr in acks:
            self._mark_quiet(arr)
        keys = [None] * len(key_ids)
        for (tb, partition), kid in key_ids.items():
            topic = self._names.get(tb)
            if topic is None:
                topic = self._names[tb] = self._topic_name(tb, *first_at[kid])
            keys[kid] = (topic, partition)
        counts = np.zeros(len(key_ids), dtype=np.int64)
        for seg, ids in zip(self.segments, per_segment_keys):
            if len(ids):
                counts += np.bincount(ids[~seg.acked[: seg.count]], minlength=len(key_ids))
        self.pending = {keys[i]: int(c) for i, c in enumerate(counts.tolist()) if c}
        self.recovered = int(counts.sum())
        for r in fronts:
            seg = next(s for s in reversed(self.segments) if s.base <= r.seq)
            if not seg.acked[r.seq - seg.base]:
                self.front.append(r)
        self._collect()

    def _mark_quiet(self, arr: np.ndarray) -> None:
        """:meth:`ack` at open: flags only."""
        bases = np.array([s.base for s in self.segments], dtype=np.int64)
        where = np.searchsorted(bases, arr, side="right") - 1
        for i in np.unique(where).tolist():
            if i < 0:
                continue
            seg = self.segments[i]
            rel = arr[where == i] - seg.base
            seg.mark(rel[rel < seg.count])

    def _key_of(self, p: memoryview, seg: _Segment, pos: int) -> tuple[str, int]:
        try:
            _, flags, tl, partition, _, kl, hl = _REC.unpack_from(p, 0)
            if _REC.size + tl + kl + hl > len(p) or flags & ~1:
                raise ValueError("its lengths do not add up")
            tb = bytes(p[_REC.size : _REC.size + tl])
            topic = self._names.get(tb)
            if topic is None:
                topic = self._names[tb] = tb.decode("utf-8")
            return topic, partition
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos} has a good CRC but its "
                                 f"record does not parse ({e}); written by another version?") from None

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
