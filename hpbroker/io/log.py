"""PartitionLog: the durable, segmented log of one topic-partition.

One writer (thread) per log.  Appends are copied into a page-aligned staging
buffer and stamped there; :meth:`write` puts them in the file (O_DIRECT where
allowed), :meth:`sync` makes them durable (fdatasync).  The caller - usually
:class:`hpbroker.io.group_commit.GroupCommit` - decides when.

Offsets the log publishes:

* ``log_end_offset`` - next offset to assign (staged batches included).
* ``written_offset`` - everything below it is in the file.
* ``synced_offset``  - everything below it was fdatasync'd.
* ``high_watermark`` - what may be acknowledged and read: ``synced_offset``
  in ``durable`` mode, ``written_offset`` in ``async`` mode.

Failures (docs/storage.md, "Failure handling"): ENOSPC on a write rolls
the log back to the high watermark and raises :class:`DiskFull`, unless
``rollback_on_enospc`` is off (a replication master's log, whose rounds the
slaves may already hold); any other write error, and any fsync error,
fences the partition with :class:`PartitionFenced`.  Nothing is retried.

Pipelined flushes (:meth:`begin_flush`, :meth:`flush_result`) write and
fdatasync on an I/O thread while the writer stages into a second buffer;
rolls sync the old segment here and leave its index rewrite and checkpoint
to ``background`` (docs/storage.md, "Pipelined flushes", "What a roll does").

Not thread-safe: append, write, sync, read and close belong to the writer
thread.  Other processes read with :class:`hpbroker.io.reader.PartitionReader`.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import struct
import time

from hpbroker import batch as B
from hpbroker.io.config import LogConfig
from hpbroker.io import checkpoint, layout
from hpbroker.io import producer_state
from hpbroker.io.appender import SegmentWriter
from hpbroker.io.direct import aligned_buffer, open_append
from hpbroker.io.errors import DiskFull, OffsetOutOfRange, PartitionFenced, StorageError
from hpbroker.io.fetch import read_segments, timestamp_in_segments
from hpbroker.io.fs import DIR_MODE, FileSystem
from hpbroker.io.recovery import recover
from hpbroker.io.scrub import FINDING, read_finding
from hpbroker.io.segment import Segment

log = logging.getLogger("hpbroker.io")
_MAX_TS = struct.Struct("<q")
_PRODUCER = struct.Struct("<qi")  # producer_id at 48, base_sequence at 56 (hpbroker.batch)
_NOSPACE = (errno.ENOSPC, errno.EDQUOT)
_MAX_POS = 0xFFFFFFFF


class PartitionLog:
    def __init__(self, d: str, cfg: LogConfig | None = None, *, clock=time.time, fs: FileSystem | None = None,
                 topic: str | None = None, partition: int | None = None, background=None):
        self.dir = d
        # background(fn, *args): where a roll's index rewrite and checkpoint
        # run (Storage's thread); None runs them inline
        tp = layout.parse_partition_dir(os.path.basename(os.path.normpath(d))) or (d, 0)
        self.topic = tp[0] if topic is None else topic
        self.partition = tp[1] if partition is None else partition
        self._cfg = cfg = cfg or LogConfig()
        self._clock = clock
        self._fs = fs = fs or FileSystem()
        self._background = background
        self._durable = cfg.flush_mode == "durable"
        self._seg_limit = min(cfg.segment_bytes, _MAX_POS)
        self._seg_ms = cfg.segment_ms
        os.makedirs(d, mode=DIR_MODE, exist_ok=True)
        rec = recover(d, fs, cfg, self._now_ms())
        self.recovered_truncated_bytes = rec.truncated_bytes
        self._segments: list[Segment] = rec.segments
        self._fenced: Exception | None = rec.error
        self._stage = aligned_buffer(cfg.write_buffer_bytes)
        self._stage2 = None  # second staging buffer, allocated by the first pipelined flush
        self._job = None  # in-flight pipelined flush: (Job, leo, snapshot, file end)
        self._result = None  # outcome of the last applied pipelined flush, until flush_result() takes it
        self._writer: SegmentWriter | None = None
        self.direct = False
        self.rollback_on_enospc = True  # see the module docstring, "Failures"
        if not self._segments:
            if self._fenced is None:
                self._create_segment(rec.recovery_point)
            else:
                self._segments.append(Segment(d, rec.recovery_point, cfg.index_interval_bytes, self._now_ms()))
        active = self._segments[-1]
        self._leo = active.next_offset
        if self._fenced is None:
            self._open_writer(active, create=False)
        self._written = self._synced = self._leo
        self._snap = self._pending_snap = self._snapshot()
        self._bases = [s.base for s in self._segments]
        #: idempotent producers' last sequences (hpbroker.io.producer_state)
        self.producers = producer_state.load(d, self._segments, self._leo, rec.recovery_point)
        self.check_scrub_finding()  # a damaged segment the scrubber found stays fenced across restarts

    def check_scrub_finding(self) -> bool:
        """Fence the partition if the scrubber reported damage in it
        (``<dir>/scrub-finding``, :mod:`hpbroker.io.scrub`).  True when it is
        fenced by one now.  The writer calls this once a second."""
        if self._fenced is not None:
            return False
        finding = read_finding(self.dir)
        if finding is None:
            return False
        self.fence(f"the scrubber found a damaged batch: {finding}. Repair or restore the segment (hpbroker log "
                   f"verify names every bad batch), then remove {os.path.join(self.dir, FINDING)} and restart")
        return True

    def fence(self, reason: str) -> PartitionFenced:
        """Fence the partition: no more appends (PartitionFenced, with ``reason``); reads go on."""
        return self._fence(reason, RuntimeError(reason))

    # -- offsets -------------------------------------------------------------

    @property
    def log_end_offset(self) -> int:
        return self._leo

    @property
    def written_offset(self) -> int:
        return self._written

    @property
    def synced_offset(self) -> int:
        return self._synced

    @property
    def high_watermark(self) -> int:
        return self._synced if self._durable else self._written

    @property
    def earliest_offset(self) -> int:
        return self._segments[0].base

    @property
    def fenced(self) -> Exception | None:
        return self._fenced

    @property
    def key(self) -> tuple[str, int]:
        return self.topic, self.partition

    def segments(self) -> list[Segment]:
        return list(self._segments)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- appends -------------------------------------------------------------

    def append(self, batch_buf, leader_epoch: int = 0) -> int:
        """Stage one batch (already checked by the acceptor); return its base offset.

        The batch is copied into the staging buffer and its base_offset and
        leader_epoch stamped there.  It is neither written nor durable yet."""
        if self._fenced is not None:
            raise self._fenced
        src = batch_buf if type(batch_buf) is memoryview else memoryview(batch_buf)
        n = src.nbytes
        count = B.peek_count(src)
        seg = self._segments[-1]
        base = self._leo
        if seg.size:
            if (seg.size + n > self._seg_limit or base + count - seg.base > _MAX_POS
                    or (self._seg_ms and self._now_ms() - seg.created_ms >= self._seg_ms)):
                self._roll()
                seg = self._segments[-1]
        elif self._seg_ms:
            seg.created_ms = self._now_ms()
        pos = seg.size
        if self._job is not None and self._writer.fill + n > self._writer.cap:
            self._drain()  # the overflow path writes synchronously: the in-flight flush goes first
        try:
            self._writer.append(src, n, base, leader_epoch)
        except OSError as e:
            self._io_failed(e, "write")
        seg.note_batch(base - seg.base, pos, n, _MAX_TS.unpack_from(src, B.MAX_TS_AT)[0], count)
        self._leo = base + count
        pid, seq = _PRODUCER.unpack_from(src, 48)
        if pid >= 0:
            self.producers.apply(pid, seq, count, base)
        return base

    def write(self) -> int:
        """Write every staged batch to the file; in async mode that acknowledges them.
        Returns ``written_offset``.  Raises DiskFull / PartitionFenced."""
        if self._fenced is not None:
            raise self._fenced
        if self._job is not None:
            self._drain()
        if self._written == self._leo:
            return self._written
        try:
            self._writer.write_out()
        except OSError as e:
            self._io_failed(e, "write")
        self._written = self._leo
        self._pending_snap = self._snapshot()
        if not self._durable:
            self._acked()
        return self._written

    def sync(self) -> int:
        """write() then fdatasync; returns ``high_watermark``.  An fsync error fences."""
        self.write()
        if self._synced == self._written:
            return self.high_watermark
        try:
            self._writer.sync()
        except OSError as e:
            self._io_failed(e, "fdatasync")
        self._synced = self._written
        if self._durable:
            self._acked()
        return self.high_watermark

    flush = sync

    # -- pipelined flushes ---------------------------------------------------

    def begin_flush(self, io) -> bool:
        """Start writing and fdatasyncing everything staged on the I/O thread
        ``io`` (an :class:`~hpbroker.io.iothread.IOThread`); the caller may keep
        appending.  Returns False when there was nothing to flush.  A flush
        still in flight is waited for and applied first (its outcome is kept
        for :meth:`flush_result`).  Raises StorageError like :meth:`sync`."""
        if self._fenced is not None:
            raise self._fenced
        if self._job is not None:
            self._drain()
        if self._synced == self._leo:
            return False
        w = self._writer
        if w.spare is None:
            self._stage2 = self._stage2 or aligned_buffer(w.cap)
            w.spare = memoryview(self._stage2)
        region = w.detach()
        self._job = (io.submit(w.io_job, region, True), self._leo, self._snapshot(), w.written)
        return True

    @property
    def flush_in_flight(self) -> bool:
        return self._job is not None

    def flush_result(self, wait: bool = False):
        """Outcome of the last pipelined flush, once: the new high watermark, a
        StorageError (every batch not acknowledged before it failed), or None
        while it is still running (``wait=False``) or when there is none."""
        if self._job is not None:
            if not (wait or self._job[0].done):
                return None
            try:
                self._drain()
            except StorageError:
                pass
        r, self._result = self._result, None
        return r

    def _drain(self) -> None:
        """Wait for the in-flight flush and apply it (raises its StorageError)."""
        job, leo, snap, end = self._job
        job.wait()
        self._job = None
        try:
            if job.exc is not None:
                raise self._fence(f"flush failed: {job.exc!r}", job.exc)
            if job.result is not None:
                what, e = job.result
                self._io_failed(e, what)
        except StorageError as e:
            self._result = e
            raise
        self._written = self._synced = max(self._written, leo)
        self._writer.synced = max(self._writer.synced, end)
        self._pending_snap = max(self._pending_snap, snap)
        self._acked(snap, leo)  # written and synced: acknowledged in either mode
        self._result = self.high_watermark

    def _acked(self, snap=None, upto: int | None = None) -> None:
        """The batches up to the snapshot are acknowledged; write their index entries
        (only those below ``upto``: later batches may still be rolled back)."""
        self._snap = self._pending_snap if snap is None else snap
        seg = self._segments[-1]
        try:
            seg.write_index_pending(self._fs, None if upto is None or upto >= self._leo else upto - seg.base)
        except OSError as e:  # derived data: readers scan forward, the roll rewrites it
            log.warning("%s: index write failed (%s); the index is rewritten at the next roll", self.dir, e)

    def _snapshot(self):
        s = self._segments[-1]
        return (self._leo, s.size, s.max_ts, s.last_rel, s.since_index)

    # -- failures ------------------------------------------------------------

    def _io_failed(self, e: OSError, what: str):
        if e.errno in _NOSPACE and what == "write" and self.rollback_on_enospc:
            to = self._rollback(e)
            err = DiskFull(f"{self.dir}: no space left on device during {what}; the batches from offset {to} "
                           "failed and the log went back to it", self.dir, e, rolled_back_to=to)
            log.error("%s", err)
            raise err from e
        raise self._fence(f"{what} failed: {e}", e) from e

    def _fence(self, msg: str, cause: BaseException) -> PartitionFenced:
        if self._fenced is None:
            self._fenced = PartitionFenced(f"{self.dir}: {msg}; the partition is fenced read-only", self.dir, cause)
            log.error("%s", self._fenced)
        return self._fenced

    def _rollback(self, cause: OSError) -> int:
        leo, size, max_ts, last_rel, since = self._snap
        seg = self._segments[-1]
        if leo < seg.base:  # cannot happen: a roll syncs the previous segment
            raise self._fence("rollback target lies in a closed segment", cause)
        try:
            self._writer.rollback(size, seg.read_fd(self._fs))
        except OSError as e2:
            raise self._fence(f"rollback after ENOSPC failed: {e2}", e2) from e2
        seg.index.truncate_from(leo - seg.base)
        seg.tindex.truncate_from(leo - seg.base)
        seg.size, seg.max_ts, seg.last_rel, seg.since_index = size, max_ts, last_rel, since
        seg.next_offset = leo
        self._leo = self._written = leo
        self.producers.forget_from(leo)
        self._synced = min(self._synced, leo)
        self._pending_snap = self._snap
        return leo

    # -- segments ------------------------------------------------------------

    def _open_writer(self, seg: Segment, create: bool) -> None:
        fd, self.direct = open_append(self._fs, seg.log_path, self._cfg.direct_io, create=create)
        try:
            self._writer = SegmentWriter(self._fs, fd, self.direct, self._stage, seg.size, seg.read_fd(self._fs),
                                         self._stage2)
        except BaseException:
            self._fs.close(fd)
            raise

    def _create_segment(self, base: int) -> Segment:
        seg = Segment(self.dir, base, self._cfg.index_interval_bytes, self._now_ms())
        fd = self._fs.open(seg.log_path, os.O_WRONLY | os.O_CREAT)
        self._fs.close(fd)
        self._fs.fsync_dir(self.dir)
        self._segments.append(seg)
        return seg

    def _roll(self) -> None:
        """Close the active segment (durable, cut to size, indexes synced) and start the next."""
        if self._job is not None:
            self._drain()
        old, w = self._segments[-1], self._writer
        try:
            w.write_out()
            w.sync()
            w.finish()
            self._fs.fsync(w.fd)
        except OSError as e:
            self._io_failed(e, "write" if w.written < w.end else "fsync")
        self._written = self._synced = self._leo
        self._snap = self._pending_snap = self._snapshot()
        try:
            seg = self._create_segment(self._leo)
        except OSError as e:
            if e.errno in _NOSPACE:
                raise DiskFull(f"{self.dir}: no space to create a new segment", self.dir, e, self._leo) from e
            raise self._fence(f"creating a segment failed: {e}", e) from e
        old.seal()
        old.closed = True
        w.close()
        self._writer = None
        try:
            self._open_writer(seg, create=False)
        except OSError as e:
            raise self._fence(f"opening {seg.log_path} failed: {e}", e) from e
        self._bases.append(seg.base)
        self._snap = self._pending_snap = self._snapshot()
        producers = self.producers.encode(seg.base)
        if self._background is None:
            self._finish_segment(old, seg.base, producers)
        else:
            # Four more fsyncs (two index files, checkpoint file and directory)
            # would stop every partition of this writer: they run off the loop.
            # Until they are done, the old recovery point stands (recovery
            # scans one more segment) and retention leaves the segment alone.
            old.finishing = True
            self._background(self._finish_segment, old, seg.base, producers)

    def _finish_segment(self, old: Segment, recovery_point: int, producers: bytes | None = None) -> None:
        """A rolled segment's last step: its indexes rewritten and synced, the
        producers' snapshot as of the new segment written, then the
        checkpoint moved past it (only then: recovery trusts indexes below it)."""
        try:
            old.rewrite_indexes(self._fs, sync=True)
        except OSError as e:
            log.warning("%s: writing the indexes of %s failed (%s); recovery rebuilds them", self.dir, old.log_path, e)
        else:
            self._snapshot_producers(producers)
            self._checkpoint(recovery_point)
        finally:
            old.finishing = False

    def _snapshot_producers(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            producer_state.write_snapshot(self._fs, self.dir, data)
        except OSError as e:  # the old snapshot stays valid, only more gets replayed
            log.warning("%s: writing the producers' snapshot failed: %s", self.dir, e)

    def _checkpoint(self, rp: int) -> None:
        try:
            checkpoint.write(self._fs, self.dir, rp)
        except OSError as e:  # the old checkpoint stays valid, only more gets scanned
            log.warning("%s: writing the recovery checkpoint failed: %s", self.dir, e)

    def roll(self) -> None:
        """Roll now (if the active segment holds anything)."""
        if self._fenced is not None:
            raise self._fenced
        if self._segments[-1].size:
            self._roll()

    def delete_oldest_segment(self, later, archive=None) -> Segment:
        """Drop the oldest closed segment (retention); the active one is never
        deleted.  ``later``, ``archive``: see :meth:`Segment.delete`."""
        if len(self._segments) < 2:
            raise ValueError("only the active segment is left")
        seg = self._segments.pop(0)
        self._bases.pop(0)
        seg.delete(self._fs, later, archive)
        return seg

    # -- reads ---------------------------------------------------------------

    def read(self, offset: int, max_bytes: int = 1 << 20, high_watermark: int | None = None) -> bytes:
        """Raw bytes of whole batches from the one holding ``offset``: at
        least one batch, at most ``max_bytes`` otherwise, never at or past the
        high watermark.  b"" at the end of the log."""
        hw = self.high_watermark if high_watermark is None else min(high_watermark, self.high_watermark)
        if offset >= hw:
            return b""
        if offset < self._segments[0].base:
            raise OffsetOutOfRange(f"{self.dir}: offset {offset} is below the earliest offset {self.earliest_offset}", self.dir)
        i = max(bisect.bisect_right(self._bases, offset) - 1, 0)
        return read_segments(self._fs, self._segments[i:], offset, hw, max_bytes)

    def offset_for_timestamp(self, ts_ms: int) -> int | None:
        """Base offset of the first batch whose max_timestamp >= ``ts_ms`` (None: none yet)."""
        return timestamp_in_segments(self._fs, self._segments, ts_ms, self.high_watermark)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Sync what is staged, cut the padding, checkpoint, release files.
        A fenced log is only released.  Raises what a final sync raises."""
        try:
            if self._job is not None:
                try:
                    self._drain()
                except StorageError:
                    if self._fenced is not None:
                        raise
            if self._fenced is None and self._writer is not None:
                self.sync()
                w = self._writer
                try:
                    w.finish()
                    self._fs.fsync(w.fd)
                except OSError as e:
                    raise self._fence(f"closing failed: {e}", e) from e
                try:
                    self._segments[-1].sync_indexes(self._fs)
                except OSError as e:  # derived data: without the checkpoint, recovery rescans and rebuilds them
                    log.warning("%s: syncing the index files at close failed (%s); the next start rebuilds them",
                                self.dir, e)
                    return
                self._snapshot_producers(self.producers.encode(self._leo))
                self._checkpoint(self._leo)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            for s in self._segments:
                s.close(self._fs)
            for stage in (self._stage, self._stage2):
                if stage is not None and not stage.closed:
                    try:
                        stage.close()
                    except BufferError:  # a slice lives on in a stored traceback; GC frees it
                        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"PartitionLog({self.dir!r}, leo={self._leo}, hw={self.high_watermark}, fenced={self._fenced is not None})"
