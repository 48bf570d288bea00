"""Sequential appends to the active segment through a page-aligned staging buffer.

The staging buffer (an anonymous mmap, ``write_buffer_bytes``) holds the
file's bytes from ``base_pos`` (a multiple of :data:`BLOCK`) to the logical
end.  An append copies the batch in and stamps the broker's fields there
(the producer's buffer, possibly a read-only view of a shared-memory ring,
is never written).  :meth:`write_out` writes what is staged:

* O_DIRECT: from the block holding the first unwritten byte to the end
  rounded up to a block, zero padded.  The last, partial block is written
  again at the same aligned position next time, now longer; the bytes it
  already held are rewritten with the same values, so a concurrent reader
  never sees them change.  The zero padding past the logical end is never
  data: recovery and readers stop at a zero length word, and a closed
  segment is ftruncated to its logical size at roll.
* buffered (fallback): exactly the unwritten bytes, no padding.

When the buffer is full it is written out and everything but the partial
last block is dropped (``base_pos`` moves on).  A batch larger than the
buffer is copied through it in pieces.

Pipelined flushes (:meth:`detach` + :meth:`io_job`) use a second buffer of
the same size (``spare``): :meth:`detach` hands the unwritten region of the
current buffer to an I/O thread, copies the partial last block into the
spare and continues there.  The caller allows one detached region at a
time and waits for it before the next :meth:`detach` (which reuses that
buffer) and before any synchronous write.
"""

from __future__ import annotations

from hpbroker import batch as B
from hpbroker.io.direct import BLOCK, ZEROS, align_down, align_up
from hpbroker.io.fs import FileSystem


class SegmentWriter:
    __slots__ = ("fs", "fd", "direct", "stage", "mv", "spare", "cap", "base_pos", "fill", "written", "synced")

    def __init__(self, fs: FileSystem, fd: int, direct: bool, stage, size: int, read_fd: int, spare=None):
        self.fs = fs
        self.fd = fd
        self.direct = direct
        self.stage = stage
        self.mv = memoryview(stage)
        self.spare = None if spare is None else memoryview(spare)
        self.cap = len(stage)
        self.written = size  # file bytes written (logical)
        self.synced = size
        self._load_tail(size, read_fd)

    def _load_tail(self, size: int, read_fd: int) -> None:
        """Stage the partial last block of an existing file (it is rewritten by the next write)."""
        self.base_pos = align_down(size)
        self.fill = size - self.base_pos
        if self.fill:
            data = self.fs.pread(read_fd, self.fill, self.base_pos)
            if len(data) != self.fill:
                raise OSError(5, f"short read of the segment tail ({len(data)} of {self.fill} bytes)")
            self.mv[: self.fill] = data
        self.mv[self.fill : align_up(self.fill) if self.fill else 0] = ZEROS[: (align_up(self.fill) - self.fill)]

    @property
    def end(self) -> int:
        return self.base_pos + self.fill

    def append(self, src: memoryview, n: int, base_offset: int, epoch: int) -> None:
        """Copy one batch in and stamp it; may write out a full buffer (raises OSError)."""
        fill = self.fill
        if fill + n <= self.cap:
            self.mv[fill : fill + n] = src
            B.stamp(self.mv, base_offset, epoch, fill)
            self.fill = fill + n
            return
        self._append_large(src, n, base_offset, epoch)

    def _append_large(self, src, n, base_offset, epoch) -> None:
        off = 0
        while off < n:
            space = self.cap - self.fill
            if space < (B.HEADER_SIZE if off == 0 else 1):
                self.write_out()
                self._shift()
                continue
            k = min(space, n - off)
            self.mv[self.fill : self.fill + k] = src[off : off + k]
            if off == 0:
                B.stamp(self.mv, base_offset, epoch, self.fill)
            self.fill += k
            off += k

    def _region(self) -> tuple[int, int]:
        """[start, stop) of the current buffer still to write (zero padded under O_DIRECT)."""
        if self.direct:
            start = align_down(self.written - self.base_pos)
            stop = align_up(self.fill)
            if stop > self.fill:
                self.mv[self.fill : stop] = ZEROS[: stop - self.fill]
        else:
            start = self.written - self.base_pos
            stop = self.fill
        return start, stop

    def write_out(self) -> None:
        """Write every staged byte not yet in the file (raises OSError)."""
        end = self.base_pos + self.fill
        if end <= self.written:
            return
        start, stop = self._region()
        self._pwrite(self.mv, start, stop, self.base_pos + start)
        self.written = end

    def _pwrite(self, mv: memoryview, start: int, stop: int, pos: int) -> None:
        fs = self.fs
        while start < stop:
            k = fs.pwrite(self.fd, mv[start:stop], pos)
            if k <= 0:
                raise OSError(5, "pwrite wrote nothing")
            if self.direct and k % BLOCK and start + k < stop:
                raise OSError(5, f"short unaligned O_DIRECT write ({k} bytes)")
            start += k
            pos += k

    # -- pipelined flushes ------------------------------------------------------

    def detach(self):
        """Hand the unwritten staged bytes over for :meth:`io_job` and continue
        appending in the spare buffer.  Returns the region ``(mv, start, stop,
        pos)`` or None when nothing is unwritten.  The previous detached
        region's I/O must have finished (its buffer is reused here)."""
        end = self.base_pos + self.fill
        if end <= self.written:
            return None
        start, stop = self._region()
        region = (self.mv, start, stop, self.base_pos + start)
        keep_from = align_down(self.fill)
        tail = self.fill - keep_from
        nxt = self.spare
        if tail:
            nxt[:tail] = self.mv[keep_from : self.fill]
        self.spare, self.mv = self.mv, nxt
        self.base_pos += keep_from
        self.fill = tail
        self.written = end
        return region

    def io_job(self, region, sync: bool):
        """Run on the I/O thread: write ``region`` (from :meth:`detach`), then
        fdatasync when ``sync``.  Returns None, or ``(what, OSError)`` with
        what = "write" or "fdatasync"; nothing is retried."""
        if region is not None:
            mv, start, stop, pos = region
            try:
                self._pwrite(mv, start, stop, pos)
            except OSError as e:
                return "write", e.with_traceback(None)  # no frame may keep a buffer slice alive
            finally:
                del mv, region
        if sync:
            try:
                self.fs.fdatasync(self.fd)
            except OSError as e:
                return "fdatasync", e.with_traceback(None)
        return None

    def _shift(self) -> None:
        keep_from = align_down(self.fill)
        tail = self.fill - keep_from
        if tail:
            self.mv[:tail] = self.mv[keep_from : self.fill]
        self.base_pos += keep_from
        self.fill = tail

    def sync(self) -> None:
        self.fs.fdatasync(self.fd)
        self.synced = self.written

    def rollback(self, end: int, read_fd: int) -> None:
        """Forget everything staged or written past ``end`` (a batch boundary
        at or after the last acknowledged byte): the file is cut back to
        ``end`` and the staging buffer holds its partial last block again."""
        if end >= self.base_pos:
            self.fill = end - self.base_pos
        else:
            self._load_tail(end, read_fd)
        self.fs.ftruncate(self.fd, end)
        self.written = min(self.written, end)
        self.synced = min(self.synced, end)

    def finish(self) -> None:
        """Cut the zero padding off (ftruncate to the logical size)."""
        self.fs.ftruncate(self.fd, self.end)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            self.fs.close(fd)
        for mv in (self.mv, self.spare):
            if mv is None:
                continue
            try:
                mv.release()
            except BufferError:  # a slice lives on in a stored traceback (failed pwrite)
                pass
