"""Recovery on open: one function, run before a partition accepts appends.

Rules (docs/storage.md, "Recovery"):

1. Segments that lie wholly below the checkpointed recovery point are
   trusted: their size is the file size and their index files are loaded
   (rebuilt by a header walk if missing).
2. Every other segment is CRC-scanned from its start with
   :func:`hpbroker.batch.check_batch`, offsets must continue without gaps,
   and its indexes are rebuilt (indexes are never trusted after a crash).
3. A scan that stops early is a *torn tail* - and is truncated at the last
   valid batch - only if all of these hold: it is the last segment, the bad
   spot is at or past the recovery point, and no CRC-valid batch starts
   anywhere after it.  Zero padding left by O_DIRECT (a zero length word)
   is the ordinary case.  A non-last segment may only end in zeros when the
   next segment starts exactly where its batches end (padding not yet cut
   at a roll).
4. Anything else is mid-log corruption: it is reported, the partition is
   fenced (readable up to the bad batch, no appends), nothing is cut away.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from hpbroker.io.config import LogConfig
from hpbroker.io import checkpoint, layout
from hpbroker.io.damage import written_then_damaged
from hpbroker.io.epochs import known_epochs, read_entries
from hpbroker.io.errors import PartitionFenced
from hpbroker.io.fs import FileSystem
from hpbroker.io.retention import archive_dir_of, finish_archiving
from hpbroker.io.offset_index import OffsetIndex
from hpbroker.io.scan import find_valid_batch_after, first_nonzero, scan
from hpbroker.io.segment import Segment
from hpbroker.io.time_index import TimeIndex

log = logging.getLogger("hpbroker.io")


@dataclass
class Recovered:
    segments: list[Segment]
    error: PartitionFenced | None
    recovery_point: int
    truncated_bytes: int = 0


def _cleanup(d: str, fs: FileSystem, cfg: LogConfig) -> None:
    """Remove temp files, segment files retention had taken out (``.deleted``)
    and index files whose .log is gone (an interrupted delete); archive what
    retention had set aside for archiving (``.archiving``) and remove it once
    the copy is durable, or keep it if that fails."""
    names = set(os.listdir(d))
    for n in names:
        if n.endswith((".tmp", layout.DELETED_SUFFIX)):
            fs.unlink(os.path.join(d, n))
        elif n.endswith(layout.ARCHIVING_SUFFIX):
            finish_archiving(os.path.join(d, n), archive_dir_of(d, cfg), fs)
        elif n.endswith((layout.INDEX_SUFFIX, layout.TIMEINDEX_SUFFIX)):
            stem = n.rsplit(".", 1)[0]
            if stem + layout.LOG_SUFFIX not in names:
                fs.unlink(os.path.join(d, n))


def _rebuild(seg: Segment, fd: int, size: int, check: bool, epochs=None):
    def on_batch(pos, h):
        seg.note_batch(h.base_offset - seg.base, pos, h.batch_length, h.max_timestamp, h.record_count)

    return scan(fd, 0, size, seg.base, on_batch, check=check, epochs=epochs)


def recover(d: str, fs: FileSystem, cfg: LogConfig, now_ms: int) -> Recovered:
    _cleanup(d, fs, cfg)
    bases = layout.list_segments(d)
    rp = checkpoint.read(d)
    segs: list[Segment] = []
    truncated = 0
    if not bases:
        err = None
        if rp > 0:
            err = PartitionFenced(f"{d}: no segments, but the recovery point is {rp}: durable data is missing", d)
            log.error("%s", err)
        return Recovered(segs, err, rp)
    expected = bases[0]
    epochs = known_epochs(read_entries(d))  # a damaged checkpoint: no epoch check (the writer rebuilds it)
    for i, base in enumerate(bases):
        next_base = bases[i + 1] if i + 1 < len(bases) else None
        seg = Segment(d, base, cfg.index_interval_bytes, now_ms)
        if base != expected:
            return _fence(segs, rp, f"{seg.log_path} starts at offset {base}, but the previous segment ends at {expected}", d)
        size = os.stat(seg.log_path).st_size
        if next_base is not None and next_base <= rp and os.path.exists(seg.index_path) \
                and os.path.exists(seg.timeindex_path):
            _load_trusted(seg, size, next_base)  # rule 1
            segs.append(seg)
            expected = next_base
            continue
        end, cut, corrupt = _scan_segment(seg, fs, size, rp, next_base, epochs)  # rules 2-4
        segs.append(seg)
        if corrupt:
            return _fence(segs, rp, corrupt, d)
        truncated += cut
        expected = end.next_offset
    if expected < rp:
        return _fence(segs, rp, f"the log ends at offset {expected}, below the recovery point {rp}: durable data is missing", d)
    return Recovered(segs, None, rp, truncated)


def _load_trusted(seg: Segment, size: int, next_base: int) -> None:
    """A closed segment wholly below the recovery point: its size and index files stand."""
    seg.index = OffsetIndex.load(seg.index_path, max_pos=size)
    seg.tindex = TimeIndex.load(seg.timeindex_path)
    seg.size = size
    seg.next_offset = next_base
    seg.max_ts = seg.tindex.last_timestamp if len(seg.tindex) else -1
    seg.closed = True


def _scan_segment(seg: Segment, fs: FileSystem, size: int, rp: int, next_base: int | None,
                  epochs=None):
    """CRC-scan ``seg`` and rebuild its indexes; cut a torn tail (rule 3).
    -> (where the scan ended, bytes cut, "" or why the bad spot is
    corruption - then nothing is cut and ``seg`` ends before the bad batch)."""
    is_last = next_base is None
    cut = 0
    fd = fs.open(seg.log_path, os.O_RDONLY)
    try:
        end = _rebuild(seg, fd, size, check=True, epochs=epochs)
        if end.reason is not None:
            where = f"{seg.log_path} position {end.pos} (offset {end.next_offset})"
            mid = ""
            after = find_valid_batch_after(fd, end.pos, size)
            if after is not None:
                mid = f"a valid batch follows at position {after}"
            elif end.next_offset < rp:
                mid = f"it lies below the recovery point {rp}"
            elif not is_last and not (end.zero and next_base == end.next_offset):
                mid = "it is not in the last segment"
            if mid:
                seg.size = end.pos
                return end, 0, (f"corrupt batch at {where}: {end.reason}; {mid}. "
                                "Mid-log corruption: the partition is fenced, nothing was truncated")
            damaged = written_then_damaged(fd, end.pos, size)
            if damaged:
                seg.size = end.pos
                return end, 0, (f"corrupt batch at {where}: {end.reason}; {damaged}. Not a torn tail (that would "
                                "hold an unwritten, zero sector): the partition is fenced, nothing was truncated")
            junk = first_nonzero(fd, end.pos, size) if end.zero else end.pos
            if size - end.pos and junk is not None:
                # zeros alone are O_DIRECT padding; anything else cut here is named
                why = end.reason if junk == end.pos else f"{end.reason}, then non-zero bytes from position {junk}"
                log.warning("%s: truncating a torn tail of %d bytes at %s (%s)", seg.dir, size - end.pos, where, why)
            cut = size - end.pos
            fs.truncate_file(seg.log_path, end.pos)
    finally:
        fs.close(fd)
    seg.size = end.pos
    seg.closed = not is_last
    if not is_last:
        seg.seal()
    seg.rewrite_indexes(fs, sync=not is_last)
    return end, cut, ""


def _fence(segs, rp, msg, d) -> Recovered:
    err = PartitionFenced(f"{d}: {msg}", d)
    log.error("%s", err)
    return Recovered(segs, err, rp)
