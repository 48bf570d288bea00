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
from hpbroker.io.scan import find_valid_batch_after, scan


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
            if end.zero and nxt is None:
                rest = os.pread(fd, size - end.pos, end.pos)
                if not any(rest):
                    return  # zero padding
            yield Item(path, end.pos, None, end.reason)
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
    bases = layout.list_segments(d)
    expected = None
    for base in bases:
        path = layout.log_path(d, base)
        if expected is not None and base != expected:
            yield Item(path, 0, None, f"segment starts at offset {base}, the previous one ends at {expected}")
        for it in inspect_segment(path, base):
            if it.header is not None:
                expected = it.header.last_offset + 1
            yield it
        if expected is None or expected < base:
            expected = base
