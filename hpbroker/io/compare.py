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


def _batches(d: str):
    """(header, path, pos) of every intact batch; a bad spot raises."""
    for it in inspect_partition(d):
        if it.header is None:
            raise ValueError(f"{it.path} position {it.pos}: {it.problem}")
        yield it.header, it.path, it.pos


def _read(path: str, pos: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(pos)
        return f.read(n)


def compare_partitions(d1: str, d2: str, upto: int | None = None) -> Comparison:
    c = Comparison()
    a = list(_batches(d1)) if os.path.isdir(d1) else []
    b = list(_batches(d2)) if os.path.isdir(d2) else []
    end_a = a[-1][0].last_offset + 1 if a else 0
    end_b = b[-1][0].last_offset + 1 if b else 0
    c.ends = (end_a, end_b)
    limit = min(end_a, end_b) if upto is None else upto
    if upto is not None and (end_a < upto or end_b < upto):
        c.problem = f"a log ends before offset {upto} (ends at {end_a} and {end_b})"
        return c
    ib = {h.base_offset: (h, p, pos) for h, p, pos in b}
    for h, p, pos in a:
        if h.base_offset >= limit:
            break
        other = ib.get(h.base_offset)
        if other is None:
            c.problem = f"{p} position {pos}: batch {h.base_offset}..{h.last_offset} has no batch at the same offset in {d2}"
            return c
        h2, p2, pos2 = other
        if h2.batch_length != h.batch_length or _read(p, pos, h.batch_length) != _read(p2, pos2, h2.batch_length):
            c.problem = (f"batch at offset {h.base_offset} differs: {p} position {pos} (epoch {h.leader_epoch}) vs "
                         f"{p2} position {pos2} (epoch {h2.leader_epoch})")
            return c
        c.batches += 1
        c.common_end = h.last_offset + 1
    return c
