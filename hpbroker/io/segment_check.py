"""Checking one closed segment as the scrubber does (:mod:`hpbroker.io.scrub`).

:func:`check_segment` reads a segment around the page cache (O_DIRECT
where the filesystem allows it; :class:`SegmentReader`), at the rate a
:class:`Throttle` allows, and checks every batch as recovery's scan does,
the segment's end against the next segment's base, and both index files
against the batches.  It returns :class:`Finding` s: a data finding first
(it ends the walk), then at most one index finding.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import Callable

from hpbroker.io import layout
from hpbroker.io.offset_index import OffsetIndex
from hpbroker.io.scan import scan
from hpbroker.io.time_index import TimeIndex

#: bytes per read: small, so a writer's flush never queues behind a long read (the idle I/O class does
#: nothing under mq-deadline or none, the schedulers most VMs have)
CHUNK = 256 << 10
_ALIGN = 4096


@dataclass(frozen=True)
class Finding:
    """One damaged spot: ``kind`` "data" (fenced) or "index" (reported)."""

    kind: str
    path: str
    position: int
    offset: int
    reason: str

    def describe(self) -> str:
        return f"{self.path} position {self.position} (offset {self.offset}): {self.reason}"


class Throttle:
    """A token bucket over bytes: :meth:`take` sleeps so that the long-run
    rate stays at ``rate`` bytes/s, with bursts of one ``burst``."""

    def __init__(self, rate: int, burst: int = CHUNK, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], object] = time.sleep):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.wait = wait
        self._at = clock() - (burst / rate if rate > 0 else 0.0)  # a full bucket

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        self._at = max(self._at, now - self.burst / self.rate) + n / self.rate
        if self._at > now:
            self.wait(self._at - now)


class SegmentReader:
    """``pread``-shaped reads of one file, O_DIRECT when ``direct`` and the
    filesystem allow it, each through ``throttle``."""

    def __init__(self, path: str, direct: bool, throttle: Throttle | None):
        self.throttle = throttle
        self.direct = False
        flags = os.O_RDONLY
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT)
                self.direct = True
            except OSError:
                self.fd = os.open(path, flags)
        else:
            self.fd = os.open(path, flags)
        self._buf: mmap.mmap | None = None

    def pread(self, fd: int, n: int, pos: int) -> bytes:
        if self.throttle is not None:
            self.throttle.take(n)
        if not self.direct:
            data = os.pread(fd, n, pos)
            try:
                os.posix_fadvise(fd, pos, n, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            return data
        start = pos - pos % _ALIGN
        size = -(-(pos + n - start) // _ALIGN) * _ALIGN
        if self._buf is None or len(self._buf) < size:
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, size)
        got = os.preadv(fd, [memoryview(self._buf)[:size]], start)
        return self._buf[pos - start: max(pos - start, min(got, pos - start + n))]

    def close(self) -> None:
        os.close(self.fd)
        if self._buf is not None:
            self._buf.close()


def check_segment(path: str, base: int, next_base: int, epochs, *, direct: bool = True,
                  throttle: Throttle | None = None) -> tuple[list[Finding], int, int]:
    """Check one closed segment and its indexes.  Returns ``(findings,
    bytes read, batches)``; a data finding comes first and ends the walk."""
    findings: list[Finding] = []
    idx = OffsetIndex.load(layout.index_path(os.path.dirname(path), base))
    tidx = TimeIndex.load(layout.timeindex_path(os.path.dirname(path), base))
    r = SegmentReader(path, direct, throttle)
    state = {"i": 0, "t": 0, "max_ts": -1, "batches": 0}
    rels, poss = idx.rel, idx.pos
    trels, tts = tidx.rel, tidx.ts

    def index_problem(what: str, pos: int, off: int) -> None:
        if not any(f.kind == "index" for f in findings):  # one per segment is enough to say it is damaged
            name = layout.timeindex_path if what.startswith(".timeindex") else layout.index_path
            findings.append(Finding("index", name(os.path.dirname(path), base), pos, off, what))

    def on_batch(pos, h):
        state["batches"] += 1
        rel = h.base_offset - base
        i = state["i"]
        while i < len(poss) and poss[i] < pos:
            index_problem(f".index entry {i} points at position {poss[i]}, inside a batch", poss[i], base + rels[i])
            i += 1
        if i < len(poss) and poss[i] == pos:
            if rels[i] != rel:
                index_problem(f".index entry {i} says offset {base + rels[i]} starts at position {pos}, where offset "
                              f"{h.base_offset} does", pos, h.base_offset)
            i += 1
        state["i"] = i
        if h.max_timestamp > state["max_ts"]:
            state["max_ts"] = h.max_timestamp
        t = state["t"]
        while t < len(trels) and trels[t] < rel:
            index_problem(f".timeindex entry {t} names offset {base + trels[t]}, which starts no batch",
                          pos, base + trels[t])
            t += 1
        while t < len(trels) and trels[t] == rel:
            if tts[t] != state["max_ts"]:
                index_problem(f".timeindex entry {t} says {tts[t]} where the largest timestamp up to offset "
                              f"{h.base_offset} is {state['max_ts']}", pos, h.base_offset)
            t += 1
        state["t"] = t

    try:
        size = os.fstat(r.fd).st_size
        try:
            end = scan(r.fd, 0, size, base, on_batch, check=True, pread=r.pread, epochs=epochs, table=False,
                       chunk=CHUNK)
        except OSError as e:  # a read error on the device is exactly what a scrub is for
            return [Finding("data", path, -1, -1, f"read error: {e}")], size, state["batches"]
        if end.reason is not None:
            findings.insert(0, Finding("data", path, end.pos, end.next_offset, end.reason))
        elif end.next_offset != next_base:
            findings.insert(0, Finding("data", path, end.pos, end.next_offset,
                                       f"the segment ends at offset {end.next_offset}, but the next one starts at "
                                       f"{next_base}"))
        else:
            for name, fn, entries, width in (("index", layout.index_path, len(idx), OffsetIndex.ENTRY_SIZE),
                                             ("timeindex", layout.timeindex_path, len(tidx), TimeIndex.ENTRY_SIZE)):
                try:
                    on_disk = os.path.getsize(fn(os.path.dirname(path), base))
                except FileNotFoundError:
                    continue
                if on_disk != entries * width:  # a loader stops at the first entry out of order: the rest is unseen
                    index_problem(f".{name} holds {on_disk} bytes, but only its first {entries} entries are in order",
                                  0, base)
            if state["i"] < len(poss):
                index_problem(f".index entry {state['i']} points past the last batch", poss[state["i"]],
                              base + rels[state["i"]])
            if state["t"] < len(trels):
                index_problem(f".timeindex entry {state['t']} names an offset past the last batch", size,
                              base + trels[state["t"]])
        return findings, size, state["batches"]
    finally:
        r.close()
