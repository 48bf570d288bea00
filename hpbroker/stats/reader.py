"""The read side of the stats block: sums over slots, without a lock.

The HTTP process calls :func:`snapshot` once per scrape or dashboard tick.
Every number is read from the live memory as it is at that moment (the
writers never wait for a reader, so a counter may move between two reads:
each value is right, the set is not one instant).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hpbroker.stats import layout as L
from hpbroker.stats.block import StatsBlock
from hpbroker.stats.logtail import read_lines


@dataclass
class Process:
    name: str
    kind: str
    pid: int
    heartbeat_age_s: float | None
    started_ns: int


@dataclass
class Snapshot:
    taken_ns: int
    counters: dict[str, int]
    gauges: dict[str, int]
    #: requests[kind][code] = replies (only codes seen)
    requests: dict[str, dict[int, int]]
    #: name -> (non-cumulative bucket counts incl. +Inf, sum in the metric's unit, count)
    histograms: dict[str, tuple[list[int], float, int]]
    processes: list[Process]
    #: partition key -> {field: value} summed over the processes' rows
    rows: dict[int, dict[str, int]] = field(default_factory=dict)


def _slots(block: StatsBlock) -> np.ndarray:
    """Every slot as one (slots, words) int64 array over the live memory."""
    return np.frombuffer(block.buf, dtype="<i8", count=block.slots * block.words,
                         offset=block.base).reshape(block.slots, block.words)


def snapshot(block: StatsBlock, *, rows: bool = True) -> Snapshot:
    a = _slots(block)
    now = time.time_ns()
    counters = dict(zip(L.COUNTERS, a[:, L.COUNTERS_AT:L.COUNTERS_AT + len(L.COUNTERS)].sum(axis=0).tolist()))
    gauges = dict(zip(L.GAUGES, a[:, L.GAUGES_AT:L.GAUGES_AT + len(L.GAUGES)].sum(axis=0).tolist()))
    req = a[:, L.REQUESTS_AT:L.REQUESTS_AT + len(L.REQUEST_KINDS) * L.CODE_SLOTS].sum(axis=0)
    req = req.reshape(len(L.REQUEST_KINDS), L.CODE_SLOTS)
    requests = {k: {int(c): int(req[i, c]) for c in np.flatnonzero(req[i])} for i, k in enumerate(L.REQUEST_KINDS)}
    hists = {}
    for h, at in zip(L.HISTOGRAMS, L.HISTOGRAM_AT):
        v = a[:, at:at + h.width].sum(axis=0).tolist()
        nb = len(h.bounds) + 1
        hists[h.name] = (v[:nb], v[nb] / h.scale, v[nb + 1])
    procs = []
    for i, name in enumerate(block.names):
        pid, kind, beat, started = (int(x) for x in a[i, :4])
        procs.append(Process(name, L.KINDS[kind] if 0 <= kind < len(L.KINDS) else "?", pid,
                             (now - beat) / 1e9 if beat else None, started))
    snap = Snapshot(now, counters, gauges, requests, hists, procs)
    if rows:
        snap.rows = partition_rows(a, block.rows)
    return snap


def partition_rows(a: np.ndarray, rows: int) -> dict[int, dict[str, int]]:
    """Rows of every slot, summed by partition key (the writer's log
    offsets and sizes and the acceptors' fetch counters meet here: each
    field has one writer per partition, or is a sum of counters)."""
    t = a[:, L.ROWS_AT:L.ROWS_AT + rows * L.ROW_WORDS].reshape(-1, L.ROW_WORDS)
    t = t[t[:, 0] != 0]
    if not len(t):
        return {}
    keys, inv = np.unique(t[:, 0], return_inverse=True)
    sums = np.zeros((len(keys), L.ROW_WORDS), dtype=np.int64)
    np.add.at(sums, inv, t)
    names = L.ROW_FIELDS[1:]
    return {int(k): dict(zip(names, s[1:].tolist())) for k, s in zip(keys.tolist(), sums)}


def log_lines(block: StatsBlock, limit: int = 200) -> list[tuple[int, str, int, str]]:
    """(time ns, process, level, text) of the newest ``limit`` lines of all
    processes, oldest first."""
    a = _slots(block)
    out = []
    for i, name in enumerate(block.names):
        out += [(ts, name, level, text) for ts, level, text in read_lines(a[i])]
    out.sort()
    return out[-limit:]
