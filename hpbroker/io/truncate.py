"""Cut a partition's log back to an offset: the divergent tail of a replica.

This is not recovery.  Recovery only ever removes a torn tail that was
never acknowledged.  A replica truncates deliberately, and only to the
offset that the current master named in the leader-epoch handshake (the end
of the replica's last epoch on the master's side).  Everything below that
offset is kept byte for byte.

The cut is done with the partition closed, in file operations that are each
safe to crash in the middle of:

1. lower the recovery-point checkpoint to at most the base of the segment
   that holds the cut (so a crash mid-way makes recovery re-scan it);
2. delete whole segments at or past the cut, newest first;
3. ftruncate the segment holding the cut at the batch boundary, drop its
   (derived) index files, fsync the file and the directory.

Reopening the partition then runs ordinary recovery, which rebuilds the
indexes of the cut segment.
"""

from __future__ import annotations

import logging
import os

from hpbroker import batch as B
from hpbroker.io import checkpoint, layout
from hpbroker.io.epochs import EpochCache
from hpbroker.io.fs import FileSystem

log = logging.getLogger("hpbroker.io")


class TruncateError(ValueError):
    """The cut does not fall on a batch boundary, or below the log start."""


def truncate_dir(d: str, offset: int, fs: FileSystem | None = None) -> int:
    """Cut the closed partition in ``d`` so its log ends at ``offset``.

    Returns the number of bytes removed.  ``offset`` must be a batch
    boundary at or after the log start (or past the end: nothing to do)."""
    fs = fs or FileSystem()
    bases = layout.list_segments(d)
    if not bases:
        return 0
    if offset < bases[0]:
        raise TruncateError(f"{d}: cannot truncate to {offset}, below the log start {bases[0]}")
    holder = max(b for b in bases if b <= offset)
    cut = _boundary(layout.log_path(d, holder), holder, offset)
    if cut is None:
        return 0  # the log already ends at or before offset
    removed = 0
    if checkpoint.read(d) > holder:
        checkpoint.write(fs, d, holder)
    for base in sorted((b for b in bases if b > holder), reverse=True):
        p = layout.log_path(d, base)
        removed += os.path.getsize(p)
        for q in (layout.index_path(d, base), layout.timeindex_path(d, base), p):
            try:
                os.unlink(q)
            except FileNotFoundError:
                pass
    path = layout.log_path(d, holder)
    removed += os.path.getsize(path) - cut
    fs.truncate_file(path, cut)
    for q in (layout.index_path(d, holder), layout.timeindex_path(d, holder)):
        try:
            os.unlink(q)
        except FileNotFoundError:
            pass
    fs.fsync_dir(d)
    EpochCache(d, 1 << 62, fs).truncate_from(offset)
    log.warning("%s: truncated the divergent tail at offset %d (%d bytes)", d, offset, removed)
    return removed


def _boundary(path: str, base: int, offset: int) -> int | None:
    """Byte position of the batch that starts at ``offset`` in the segment,
    or None when the segment ends at or before ``offset`` (header reads
    only, one pread per batch)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos + B.HEADER_SIZE <= size:
            head = os.pread(fd, B.HEADER_SIZE, pos)
            h = B.read_header(head)
            if h.batch_length < B.HEADER_SIZE or h.magic != B.MAGIC:
                break  # zero padding or a torn tail: the log ends here
            if h.base_offset == offset:
                return pos
            if h.last_offset >= offset:
                raise TruncateError(f"{path}: offset {offset} is inside the batch {h.base_offset}..{h.last_offset}")
            pos += h.batch_length
    finally:
        os.close(fd)
    return None
