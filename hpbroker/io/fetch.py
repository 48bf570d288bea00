"""Reading whole batches out of one segment file (writer side and readers).

Reads never interpret records: they step from header to header and return
the raw bytes of whole batches, at least one (even past ``max_bytes``, as
Kafka does), never a batch whose last offset is at or past the high
watermark.  A header that does not look like a batch (zero length word of
the O_DIRECT padding, a block not yet written) ends the walk.
"""

from __future__ import annotations

import os

from hpbroker import batch as B
from hpbroker.io.scan import Window

_WALK_CHUNK = 1 << 16


def read_batches(fd: int, start: int, end: int, offset: int, hw: int, max_bytes: int, *, pread=os.pread,
                 start_offset: int | None = None):
    """Walk from ``start`` (a batch boundary at or before ``offset``) in
    ``fd[0:end)``.  Returns ``(data, exhausted)``: ``data`` holds the batches
    from the one containing ``offset`` onwards; ``exhausted`` is True when
    the walk reached the end of the segment without finding ``offset``, or
    when the batch at ``start`` does not begin at ``start_offset`` (an index
    entry that does not hold: the caller walks from the segment start)."""
    win = Window(fd, end, pread, _WALK_CHUNK)
    pos = start
    first = -1
    total = 0
    while pos + B.HEADER_SIZE <= end:
        v = win.view(pos, B.HEADER_SIZE)
        if v is None:
            break
        buf, o = v
        length = B.peek_length(buf, o)
        if length < B.HEADER_SIZE or buf[o + B.MAGIC_AT] != B.MAGIC:
            if pos == start and start_offset is not None:
                return b"", True
            break
        if start_offset is not None:
            if B.peek_base_offset(buf, o) != start_offset:
                return b"", True
            start_offset = None
        last = B.peek_base_offset(buf, o) + B.peek_count(buf, o) - 1
        if last >= hw:
            return _collect(fd, first, total, pread), False
        if first < 0:
            if last >= offset:
                first = pos
            else:
                pos += length
                continue
        elif total + length > max_bytes:
            break
        total += length
        pos += length
        if total >= max_bytes:
            break
    if first < 0:
        return b"", True
    return _collect(fd, first, total, pread), False


def _collect(fd, first, total, pread) -> bytes:
    if first < 0 or total == 0:
        return b""
    data = pread(fd, total, first)
    if len(data) < total:  # the file shrank under us: return whole batches only
        data = data[: _whole_prefix(data)]
    return data


def _whole_prefix(data: bytes) -> int:
    end = 0
    for pos, h in B.iter_batches(data):
        end = pos + h.batch_length
    return end


def starts_at(fd: int, pos: int, offset: int, *, pread=os.pread) -> bool:
    """Does a batch of base offset ``offset`` start at ``pos``?  (An index hint checked before it is followed.)"""
    head = pread(fd, B.HEADER_SIZE, pos)
    return len(head) == B.HEADER_SIZE and head[B.MAGIC_AT] == B.MAGIC and B.peek_base_offset(head) == offset


def find_timestamp(fd: int, start: int, end: int, ts: int, hw: int, *, pread=os.pread) -> int | None:
    """Base offset of the first batch at or after ``start`` with
    ``max_timestamp >= ts`` and below ``hw``; None if none in this segment."""
    win = Window(fd, end, pread, _WALK_CHUNK)
    pos = start
    while pos + B.HEADER_SIZE <= end:
        v = win.view(pos, B.HEADER_SIZE)
        if v is None:
            return None
        h = B.read_header(*v)
        if h.batch_length < B.HEADER_SIZE or h.magic != B.MAGIC or h.last_offset >= hw:
            return None
        if h.max_timestamp >= ts:
            return h.base_offset
        pos += h.batch_length
    return None


def read_segments(fs, segments, offset: int, hw: int, max_bytes: int) -> bytes:
    """:func:`read_batches` over a writer's open segments, from the first of
    ``segments`` (the one holding ``offset``) on, using each one's index."""
    for seg in segments:
        rel, pos = seg.index.lookup(offset - seg.base) if offset > seg.base else (0, 0)
        data, exhausted = read_batches(seg.read_fd(fs), pos, seg.size, offset, hw, max_bytes,
                                       start_offset=seg.base + rel if pos else None)
        if exhausted and pos:  # an index entry that does not hold (a damaged index file): walk from the start
            data, exhausted = read_batches(seg.read_fd(fs), 0, seg.size, offset, hw, max_bytes)
        if data or not exhausted:
            return data
    return b""


def timestamp_in_segments(fs, segments, ts_ms: int, hw: int) -> int | None:
    """Base offset of the first batch below ``hw`` whose max_timestamp >= ``ts_ms``, over open segments."""
    for seg in segments:
        if seg.max_ts < ts_ms or seg.base >= hw:
            continue
        rel = seg.tindex.lookup_before(ts_ms)
        pos = seg.index.lookup(rel)[1] if rel is not None else 0
        off = find_timestamp(seg.read_fd(fs), pos, seg.size, ts_ms, hw)
        if off is not None:
            return off
    return None
