"""Are two replicas of a partition byte-identical?  (``hpbroker log verify --compare``)

Replication copies batches byte for byte, stamped offsets and epochs
included, so after a slave has caught up both logs hold the same batches up
to the replicated watermark.  This walks both logs batch by batch, up to the
shorter one's end (or ``upto``), and names the first difference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hpbroker.io.inspect import inspect_partition


@dataclass
class Comparison:
    batches: int = 0
    common_end: int = 0  # offsets below this were compared
    ends: tuple[int, int] = (0, 0)
    problem: str | None = None


def _batches(d: str, progress=None):
    """(header, path, pos) of every intact batch; a bad spot raises.
    ``progress(nbytes)`` hears each batch's length as it is read."""
    if not os.path.isdir(d):
        return
    for it in inspect_partition(d):
        if it.header is None:
            raise ValueError(f"{it.path} position {it.pos}: {it.problem}")
        if progress is not None:
            progress(it.header.batch_length)
        yield it.header, it.path, it.pos


def _read(path: str, pos: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(pos)
        return f.read(n)


def compare_partitions(d1: str, d2: str, upto: int | None = None, progress=None) -> Comparison:
    """Walk both logs once, side by side (memory does not grow with the log),
    comparing every batch of ``d1`` below the shorter log's end (or ``upto``)
    with the batch at the same base offset in ``d2``."""
    c = Comparison()
    other = _batches(d2, progress)
    hb = next(other, None)
    end_a = end_b = 0
    differ = None
    for h, p, pos in _batches(d1, progress):
        end_a = h.last_offset + 1
        if differ is not None or (upto is not None and h.base_offset >= upto):
            continue  # walked on only to learn where the log ends
        while hb is not None and hb[0].base_offset < h.base_offset:
            end_b = hb[0].last_offset + 1
            hb = next(other, None)
        if hb is None or hb[0].base_offset > h.base_offset:
            if hb is None and h.base_offset >= end_b:
                continue  # past the other log's end: nothing to compare
            differ = f"{p} position {pos}: batch {h.base_offset}..{h.last_offset} has no batch at the same offset in {d2}"
            continue
        h2, p2, pos2 = hb
        if h2.batch_length != h.batch_length or _read(p, pos, h.batch_length) != _read(p2, pos2, h2.batch_length):
            differ = (f"batch at offset {h.base_offset} differs: {p} position {pos} (epoch {h.leader_epoch}) vs "
                      f"{p2} position {pos2} (epoch {h2.leader_epoch})")
            continue
        c.batches += 1
        c.common_end = h.last_offset + 1
    while hb is not None:
        end_b = hb[0].last_offset + 1
        hb = next(other, None)
    c.ends = (end_a, end_b)
    if upto is not None and (end_a < upto or end_b < upto):
        c.problem = f"a log ends before offset {upto} (ends at {end_a} and {end_b})"
    else:
        c.problem = differ
    return c
