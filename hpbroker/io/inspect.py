"""Batch-by-batch inspection of segment files, for ``hpbroker log dump|verify``.

Unlike recovery it does not stop at the first bad batch: it reports it and
resynchronises at the next CRC-valid batch, so one run names every bad spot.
Trailing zeros (O_DIRECT padding of an active segment) are not an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from hpbroker import batch as B
from hpbroker.io import layout
from hpbroker.io.scan import find_valid_batch_after, first_nonzero, scan


@dataclass(frozen=True, slots=True)
class Item:
    path: str
    pos: int
    header: B.BatchHeader | None  # None for a bad spot
    problem: str | None = None


def inspect_segment(path: str, base: int) -> Iterator[Item]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos, expected = 0, base
        while pos < size:
            items: list[Item] = []
            end = scan(fd, pos, size, expected, lambda p, h: items.append(Item(path, p, h)), check=True)
            yield from items
            if end.reason is None:
                return
            nxt = find_valid_batch_after(fd, end.pos, size)
            reason = end.reason
            if end.zero and nxt is None:
                junk = first_nonzero(fd, end.pos, size)
                if junk is None:
                    return  # zero padding
                reason = (f"zero padding from position {end.pos}, then {size - junk} bytes that are not a batch "
                          f"from position {junk} (recovery cuts them as a torn tail if this is the active segment)")
            yield Item(path, end.pos, None, reason)
            if nxt is None:
                return
            pos = nxt
            expected = B.peek_base_offset(os.pread(fd, B.HEADER_SIZE, nxt))
    finally:
        os.close(fd)


def partition_dirs(d: str) -> list[str]:
    """``d`` itself if it is a partition directory, else its partition subdirectories."""
    if layout.is_partition_dir(d):
        return [d]
    return [os.path.join(d, f"{t}-{p}") for t, p in layout.list_partitions(d)]


def inspect_partition(d: str) -> Iterator[Item]:
    """Every batch and bad spot of a partition's segments, and the gaps
    between segments.  When a segment ends in a bad spot, where it really
    ends is unknown (the bad batch's record count is not to be trusted), so
    the next segment may start at any offset past its last good batch; only
    an overlap is reported then, never a gap that the bad spot explains."""
    bases = layout.list_segments(d)
    expected = None
    bad_end = False  # the previous segment ended in a bad spot
    for base in bases:
        path = layout.log_path(d, base)
        if expected is not None and (base < expected or (base != expected and not bad_end)):
            yield Item(path, 0, None, f"segment starts at offset {base}, the previous one ends at {expected}")
        bad_end = False
        for it in inspect_segment(path, base):
            if it.header is not None:
                expected = it.header.last_offset + 1
            bad_end = it.header is None
            yield it
        if expected is None or expected < base:
            expected = base
