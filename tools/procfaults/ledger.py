"""What the clients were told, against what the log holds after a restart.

Every acknowledged produce request is one batch: ``Acked(topic, partition,
base offset, count, cycle, writer, first seq, acks)``.  After each restart
:meth:`Ledger.check` reads the log from where the previous check ended (or
from offset 0 when ``full``) and counts:

==============  ================================================================
lost            acknowledged records not at their acknowledged offset with their
                value (per acks: ``lost_all``, ``lost_one``); each counted once
dup             records (by cycle, writer, seq) found more than once
gaps            offsets missing between consecutive batches, or before the high
                watermark; overlapping batches count too
regressed       offsets below the previous check's high watermark that are gone
                (everything a consumer could read then was durable)
bad             records whose bytes are not the value their writer made
unacked_found   records present whose request got no acknowledgement (the
                outcome of an unanswered request is unknown: no target)
==============  ================================================================

Spot checks re-read a sample of older acknowledged batches at their offsets
between full checks.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from procfaults.common import latest, scan
from procfaults.ingest_writer import parse, plan, value


@dataclass(frozen=True, slots=True)
class Acked:
    topic: str
    p: int
    base: int
    n: int
    cycle: int
    writer: int
    first: int
    acks: int


COUNTS = ("lost_all", "lost_one", "dup", "gaps", "regressed", "bad", "unacked_found", "spot_checked")


class Ledger:
    def __init__(self, partitions: int, seed: int = 0):
        self.partitions = partitions
        self.topics: list[str] = []  # every topic written to, in order
        self.acked: list[Acked] = []
        self.lost: set[Acked] = set()
        self.seeds: dict[tuple[int, int], int] = {}  # (cycle, writer) -> the writer's seed
        self.verified_end: dict[tuple[str, int], int] = defaultdict(int)
        self.rnd = random.Random(seed)

    def topic(self, name: str) -> str:
        """Note that ``name`` is written to (its log is checked from now on)."""
        if name not in self.topics:
            self.topics.append(name)
        return name

    def add(self, acked: list[Acked]) -> None:
        self.acked += acked

    def check(self, url: str, new: list[Acked], cycle: int, full: bool = False) -> dict:
        """Read the log at ``url`` and count (see the module's table); ``new``:
        what cycle ``cycle`` acknowledged; ``full``: from offset 0, every
        acknowledgement so far."""
        c = dict.fromkeys(COUNTS, 0)
        found: dict[tuple[str, int], dict[int, tuple]] = defaultdict(dict)
        ranges: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for tp in [(t, p) for t in self.topics for p in range(self.partitions)]:
            hwm = latest(url, *tp)
            c["regressed"] += max(0, self.verified_end[tp] - hwm)
            start = 0 if full else min(self.verified_end[tp], hwm)
            nxt = start
            for base, n, values in scan(url, *tp, start, hwm):
                if base + n <= start:
                    continue
                c["gaps"] += abs(base - nxt)
                nxt = base + n
                cyc, w, s = parse(values[0])
                size = plan(self.seeds.get((cyc, w), 0))[0]
                if values != [value(cyc, w, s + i, size) for i in range(n)]:
                    c["bad"] += n
                found[tp][base] = (cyc, w, s, n)
                ranges[(cyc, w)].append((s, n))
            c["gaps"] += max(0, hwm - nxt)
            self.verified_end[tp] = hwm
        for rs in ranges.values():
            rs.sort()
            end = -1
            for s, n in rs:
                if s < end:
                    c["dup"] += min(end, s + n) - s
                end = max(end, s + n)
        acked_here = set()
        for a in (self.acked if full else new):
            if a in self.lost:
                continue
            got = found[(a.topic, a.p)].get(a.base)
            if got is None:
                got = self._at(url, a)
            if got != (a.cycle, a.writer, a.first, a.n):
                self.lost.add(a)
                c["lost_all" if a.acks == -1 else "lost_one"] += a.n
            acked_here.add((a.cycle, a.writer, a.first))
        if not full:
            older = [a for a in self.acked if a.cycle != cycle and a not in self.lost]
            for a in self.rnd.sample(older, min(16, len(older))):
                c["spot_checked"] += 1
                if self._at(url, a) != (a.cycle, a.writer, a.first, a.n):
                    self.lost.add(a)
                    c["lost_all" if a.acks == -1 else "lost_one"] += a.n
        for batches in found.values():
            for cyc, w, s, n in batches.values():
                if (cyc, w, s) not in acked_here and (full or cyc == cycle):
                    c["unacked_found"] += n
        return c

    def _at(self, url: str, a: Acked):
        """The batch that holds offset ``a.base`` now, as (cycle, writer, first seq, count), or None."""
        for base, n, values in scan(url, a.topic, a.p, a.base, a.base + 1):
            return (*parse(values[0]), n) if base == a.base else ("a batch at", base)
        return None
