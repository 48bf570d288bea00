"""The scrubber: re-read closed segments at a set rate and report damage.

Recovery trusts the segments below the recovery point (docs/storage.md), so
a bit that flips in an old segment would otherwise stay unseen until a
consumer's CRC check meets it.  ZFS and Ceph scrub for this reason; Kafka
does not.  :class:`Scrubber` walks every partition of a data directory,
oldest segment first, and checks every closed segment (all but the last of
a partition, which its writer still appends to;
:func:`hpbroker.io.segment_check.check_segment`):

* every batch as recovery's scan does (:func:`hpbroker.io.scan.scan`):
  magic, lengths, CRC32C, reserved bytes, offsets that run on from the
  segment's base without a gap, a leader epoch the partition's epoch
  checkpoint knows; and that the batches end exactly at the file's end and
  at the next segment's base offset;
* the two index files against the batches: each ``.index`` entry at the
  start of the batch of its offset, each ``.timeindex`` entry at a batch
  start with the largest timestamp so far.  Index damage is reported but not
  fenced: readers check every entry they use (docs/reliability.md).

Data damage is confirmed by a second read, then reported: logged at ERROR
and written to ``<partition>/scrub-finding`` (:data:`FINDING`), a small
JSON file.  The partition's writer fences a partition holding that file
(it looks once a second, and at every start), and it stays fenced until an
operator repairs the segment and removes the file.

Reads go around the page cache (O_DIRECT where the filesystem allows it):
they check what is on the disk, not a cached copy, and they do not evict
what consumers read.  The rate (bytes per second) is a token bucket over the
reads, so a scrub never takes more of the disk than it was given; the
process that runs this also lowers its CPU and I/O priority
(hpbroker/broker/scrubber_process.py).  Progress is kept in
``<data_dir>/scrub-state.json`` (:data:`STATE`), so a restart goes on where
the last run stopped instead of rereading the oldest segments.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from hpbroker.io import layout
from hpbroker.io.epochs import known_epochs, read_entries
from hpbroker.io.fs import FileSystem
from hpbroker.io.segment_check import Finding, Throttle, check_segment

log = logging.getLogger("hpbroker.scrub")

FINDING = "scrub-finding"
STATE = "scrub-state.json"


@dataclass
class ScrubState:
    """What ``scrub-state.json`` holds: where the pass is, and counters."""

    partition: str = ""  # the partition directory name being scrubbed ("" = a pass has not begun)
    segment: int = -1  # the last segment of it checked
    pass_started: float = 0.0  # wall clock
    last_pass_seconds: float = -1.0
    passes: int = 0
    bytes: int = 0
    batches: int = 0
    segments: int = 0
    findings: int = 0
    index_findings: int = 0
    found: list = field(default_factory=list)  # the last few findings, newest last

    @classmethod
    def load(cls, data_dir: str) -> "ScrubState":
        try:
            with open(os.path.join(data_dir, STATE)) as f:
                raw = json.load(f)
            return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, data_dir: str, fs: FileSystem) -> None:
        fs.write_atomic(os.path.join(data_dir, STATE), json.dumps(asdict(self)).encode())


def stats(data_dir: str) -> dict:
    """The scrubber's counters for ``hpbroker stats`` (from its state file)."""
    st = ScrubState.load(data_dir)
    return {"scrub_passes": st.passes, "scrub_bytes": st.bytes, "scrub_batches": st.batches,
            "scrub_segments": st.segments, "scrub_findings": st.findings, "scrub_index_findings": st.index_findings,
            "scrub_last_pass_s": round(st.last_pass_seconds, 3),
            "scrub_position": f"{st.partition}/{layout.segment_name(st.segment)}" if st.partition else ""}


def read_finding(partition_dir: str) -> str | None:
    """The scrubber's report on a partition (its ``scrub-finding`` file), or None."""
    try:
        with open(os.path.join(partition_dir, FINDING)) as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(raw)
        return f"{d['path']} position {d['position']} (offset {d['offset']}): {d['reason']} (found {d['found_at']})"
    except (ValueError, KeyError, TypeError):
        return raw.strip() or "(an empty scrub-finding file)"


class Scrubber:
    """Scrub every closed segment under ``data_dir`` at ``rate`` bytes/s,
    a new pass at most every ``pass_interval_s``.  ``stop`` (a
    threading.Event) ends :meth:`run` at its next read or wait."""

    def __init__(self, data_dir: str, rate: int, pass_interval_s: float, *, direct: bool = True,
                 fs: FileSystem | None = None, clock: Callable[[], float] = time.time,
                 stop: threading.Event | None = None, save_every_s: float = 10.0):
        self.data_dir = str(data_dir)
        self.pass_interval_s = pass_interval_s
        self.direct = direct
        self.fs = fs or FileSystem()
        self.clock = clock
        self.stop = stop or threading.Event()
        self.save_every_s = save_every_s
        self.throttle = Throttle(rate, wait=self._wait)
        self.state = ScrubState.load(self.data_dir)
        self._saved_at = 0.0

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise _Stopped

    def run(self) -> None:
        """Passes until ``stop`` is set."""
        try:
            while not self.stop.is_set():
                self.run_pass()
                due = self.state.pass_started + self.pass_interval_s - self.clock()
                if due > 0:
                    self._wait(due)
        except _Stopped:
            pass
        finally:
            self._save(force=True)

    def run_pass(self) -> list[Finding]:
        """One pass (or the rest of one a restart interrupted): every closed
        segment once.  Returns what it found."""
        st = self.state
        if not st.partition:
            st.pass_started = self.clock()
        found: list[Finding] = []
        for topic, p in layout.list_partitions(self.data_dir):
            name = f"{topic}-{p}"
            if st.partition and name < st.partition:
                continue  # done in this pass before a restart
            resume = st.segment if name == st.partition else -1
            st.partition, st.segment = name, resume
            found += self._partition(os.path.join(self.data_dir, name), resume)
        st.passes += 1
        st.last_pass_seconds = self.clock() - st.pass_started
        st.partition, st.segment = "", -1
        self._save(force=True)
        return found

    def _partition(self, d: str, after: int) -> list[Finding]:
        found: list[Finding] = []
        if os.path.exists(os.path.join(d, FINDING)):
            return found  # fenced already; nothing new to learn until an operator repairs it
        epochs = known_epochs(read_entries(d))
        bases = layout.list_segments(d)
        for base, nxt in zip(bases, bases[1:]):  # all but the last, which its writer appends to
            if base <= after:
                continue
            path = layout.log_path(d, base)
            try:
                findings, nbytes, batches = check_segment(path, base, nxt, epochs, direct=self.direct,
                                                          throttle=self.throttle)
            except FileNotFoundError:
                continue  # retention took it meanwhile
            st = self.state
            st.bytes += nbytes
            st.batches += batches
            st.segments += 1
            st.segment = base
            for f in findings:
                if self._confirm(d, f, base, nxt, epochs):
                    found.append(f)
                    self._report(d, f)
            if any(f.kind == "data" for f in found):
                break  # fenced: the rest waits for the repair
            self._save()
        return found

    def _confirm(self, d: str, f: Finding, base: int, nxt: int, epochs) -> bool:
        """Read the segment again, unthrottled: still closed, same finding?
        (Retention, or a slave cutting a divergent tail, may have changed it.)"""
        bases = layout.list_segments(d)
        if base not in bases or bases.index(base) == len(bases) - 1 or bases[bases.index(base) + 1] != nxt:
            return False
        try:
            again, _, _ = check_segment(layout.log_path(d, base), base, nxt, epochs, direct=self.direct)
        except FileNotFoundError:
            return False
        return any(g.kind == f.kind and g.reason == f.reason for g in again)

    def _report(self, d: str, f: Finding) -> None:
        st = self.state
        st.found = (st.found + [asdict(f)])[-10:]
        if f.kind == "index":
            st.index_findings += 1
            removed = self._drop_indexes(d, f)
            log.warning("scrub: damaged index in %s: %s; removed %s: reads of that segment walk its batches from "
                        "the start until the next restart rebuilds them", os.path.basename(d), f.describe(),
                        " and ".join(removed) or "nothing (gone already)")
            return
        st.findings += 1
        record = {**asdict(f), "found_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))}
        try:
            self.fs.write_atomic(os.path.join(d, FINDING), json.dumps(record).encode())
        except OSError as e:
            log.error("scrub: could not write %s: %s", os.path.join(d, FINDING), e)
        log.error("scrub: damaged batch in %s: %s; the partition will be fenced (docs/reliability.md, "
                  "\"The scrubber\")", os.path.basename(d), f.describe())
        self._save(force=True)

    def _drop_indexes(self, d: str, f: Finding) -> list[str]:
        """Remove both index files of the segment (derived data): a reader
        without them walks the segment from its start, which is always right,
        where a damaged time index can point a timestamp lookup past its
        answer; recovery rebuilds a segment whose index files are missing."""
        base = int(os.path.basename(f.path).split(".")[0])
        removed = []
        for p in (layout.index_path(d, base), layout.timeindex_path(d, base)):
            try:
                self.fs.unlink(p)
                removed.append(os.path.basename(p))
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("scrub: could not remove %s: %s", p, e)
        return removed

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._saved_at >= self.save_every_s:
            self._saved_at = now
            try:
                self.state.save(self.data_dir, self.fs)
            except OSError as e:
                log.warning("scrub: could not save %s: %s", STATE, e)


class _Stopped(Exception):
    pass
