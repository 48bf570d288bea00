"""Walking the batches of a ``.log`` file: the one loop recovery, the tools
and the readers share.

A walk reads the file in large chunks and steps from header to header
(``batch_length``), so its cost is per batch, never per record.  It stops at
the first thing that is not a well-formed batch continuing the offsets, and
says why; what that *means* (torn tail or corruption) is decided by the
caller (:mod:`hpbroker.io.recovery`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from hpbroker import batch as B

CHUNK = 8 << 20
_MARK = bytes([B.MAGIC, 0, 0, 0])  # magic + 3 reserved zero bytes, at +16 of every header


class Window:
    """A sliding read window over ``fd[0:end)``."""

    __slots__ = ("fd", "end", "pread", "chunk", "buf", "start")

    def __init__(self, fd: int, end: int, pread=os.pread, chunk: int = CHUNK):
        self.fd = fd
        self.end = end
        self.pread = pread
        self.chunk = chunk
        self.buf = b""
        self.start = 0

    def view(self, pos: int, n: int):
        """(buffer, offset-in-buffer) holding bytes [pos, pos+n), or None if the file is shorter."""
        if not (self.start <= pos and pos + n <= self.start + len(self.buf)):
            size = min(max(self.chunk, n), self.end - pos)
            if size < n:
                return None
            self.buf = self.pread(self.fd, size, pos)
            self.start = pos
            if len(self.buf) < n:
                return None
        return self.buf, pos - self.start


@dataclass(frozen=True, slots=True)
class ScanEnd:
    pos: int  # end of the last good batch
    next_offset: int  # offset after the last good batch
    reason: str | None  # None: the region ended cleanly on a batch boundary
    zero: bool = False  # stopped at a zero length word (padding or a zeroed tail)


def scan(fd: int, start: int, end: int, next_offset: int, on_batch: Callable[[int, B.BatchHeader], None] | None,
         *, check: bool = True, pread=os.pread, epochs=None,
         table: bool = True, chunk: int = CHUNK) -> ScanEnd:
    """Walk batches in ``fd[start:end)``, expecting offsets to continue from
    ``next_offset``; ``check`` runs :func:`hpbroker.batch.check_batch` (CRC
    and layout) on each, and the structural checks of the fields the CRC
    does not cover: the reserved bytes 17-19 are zero, and with ``epochs``
    (:class:`hpbroker.io.epochs.EpochRanges` of the leader-epoch
    checkpoint) the ``leader_epoch`` is the epoch the checkpoint says that
    offset was written in (offsets below its first entry are not checked).
    Calls
    ``on_batch(pos, header)`` for every good one.  ``table=False`` leaves
    out the record-table check (the CRC covers the table; the scrubber
    looks for damage at rest, which the CRC finds)."""
    win = Window(fd, end, pread, chunk)
    pos = start
    while pos < end:
        if end - pos < B.HEADER_SIZE:
            v = win.view(pos, end - pos)
            zero = v is not None and not any(v[0][v[1]:v[1] + end - pos])
            return ScanEnd(pos, next_offset, f"{end - pos} trailing bytes, shorter than a header", zero)
        v = win.view(pos, B.HEADER_SIZE)
        if v is None:
            return ScanEnd(pos, next_offset, "file shorter than expected")
        length = B.peek_length(v[0], v[1])
        if length == 0:
            return ScanEnd(pos, next_offset, "zero length word", True)
        if length < B.HEADER_SIZE or length > end - pos:
            return ScanEnd(pos, next_offset, f"batch_length {length} does not fit the {end - pos} bytes left")
        v = win.view(pos, length)
        if v is None:
            return ScanEnd(pos, next_offset, "file shorter than expected")
        try:
            if check:
                h = B.check_batch(v[0], v[1], length, table=table)
                o = v[1] + B.MAGIC_AT + 1
                if v[0][o:o + 3] != b"\0\0\0":
                    raise B.CorruptBatch("reserved header bytes 17..19 (outside the CRC) are not zero")
            else:
                h = B.read_header(v[0], v[1])
                if h.magic != B.MAGIC or h.record_count < 1:
                    raise B.CorruptBatch(f"bad magic {h.magic} or record_count {h.record_count}")
        except B.CorruptBatch as e:
            return ScanEnd(pos, next_offset, str(e))
        if h.base_offset != next_offset:
            return ScanEnd(pos, next_offset, f"base_offset {h.base_offset} but the log expects {next_offset}")
        if epochs is not None and check:
            want = epochs.at(h.base_offset)
            if want is not None and h.leader_epoch != want:
                return ScanEnd(pos, next_offset, f"leader_epoch {h.leader_epoch} (outside the CRC), but the leader-epoch "
                               f"checkpoint has offset {h.base_offset} in epoch {want}: that field or the checkpoint "
                               "is damaged")
        if on_batch is not None:
            on_batch(pos, h)
        next_offset = h.base_offset + h.record_count
        pos += length
    return ScanEnd(pos, next_offset, None)


def first_nonzero(fd: int, start: int, end: int, *, pread=os.pread) -> int | None:
    """Position of the first non-zero byte in ``fd[start:end)``, or None when
    the region is all zeros (O_DIRECT padding) or past the file's end."""
    pos = start
    while pos < end:
        data = pread(fd, min(CHUNK, end - pos), pos)
        if not data:
            return None
        rest = data.lstrip(b"\0")
        if rest:
            return pos + len(data) - len(rest)
        pos += len(data)
    return None


def find_valid_batch_after(fd: int, pos: int, end: int, *, pread=os.pread) -> int | None:
    """Position of the first CRC-valid batch starting after ``pos``, or None.

    A bad batch followed by any valid batch is mid-log corruption, not a torn
    tail.  Candidates are found with a C-level search for the magic byte and
    the zero bytes after it; each is then fully checked."""
    step = CHUNK
    chunk_start = pos + 1
    while chunk_start < end:
        data = pread(fd, min(step + B.HEADER_SIZE, end - chunk_start), chunk_start)
        if not data:
            return None
        i = data.find(_MARK, B.MAGIC_AT)
        while i != -1:
            c = chunk_start + i - B.MAGIC_AT
            if i - B.MAGIC_AT + B.HEADER_SIZE <= len(data):
                length = B.peek_length(data, i - B.MAGIC_AT)
                if B.HEADER_SIZE <= length <= end - c:
                    buf = pread(fd, length, c)
                    try:
                        B.check_batch(buf, 0, length)
                        return c
                    except B.CorruptBatch:
                        pass
            i = data.find(_MARK, i + 1)
        chunk_start += step
    return None
