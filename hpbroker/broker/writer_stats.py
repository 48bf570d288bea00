"""What a disk writer counts in its slot of the stats block (hpbroker/stats).

Per ring record, per group-commit round and per report, never per message:
bytes appended, each round's size in batches and bytes, and for every log a
report touched its high watermark (the messages it gained are counted as
``messages_in``), its log start and, in the once-a-second full report, its
size on disk.  fdatasync latency comes from :class:`TimedFileSystem`, the
writer's file layer: the real call, timed.
"""

from __future__ import annotations

import threading
import time

from hpbroker.io.fs import FileSystem
from hpbroker.stats import NullSlot, Slot
from hpbroker.stats import layout as L

_APPENDED = L.COUNTER["appended_bytes"]
_ROUNDS = L.COUNTER["rounds"]
_ROUND_BATCHES = L.HISTOGRAM_INDEX["group_commit_batches"]
_ROUND_BYTES = L.HISTOGRAM_INDEX["group_commit_bytes"]
_FSYNC = L.HISTOGRAM_INDEX["fdatasync_seconds"]
_IN_MESSAGES, _IN_BYTES = L.ROW["messages_in"], L.ROW["bytes_in"]
_START, _END, _SIZE = L.ROW["log_start"], L.ROW["log_end"], L.ROW["size_bytes"]


class WriterStats:
    def __init__(self, slot: Slot | None = None):
        self.slot = slot or NullSlot()
        self._rows: dict[tuple[str, int], int] = {}  # partitions reported at least once -> row
        self._recovered = False  # set by the first full report: the logs recovery opened

    def appended(self, topic: str, partition: int, nbytes: int) -> None:
        """One ring record's batches were appended (staged) to (topic, partition)."""
        self.slot.add(_APPENDED, nbytes)
        self.slot.row_add(topic, partition, _IN_BYTES, nbytes)

    def round(self, batches: int, nbytes: int) -> None:
        """A group-commit round starts with ``batches`` batches of ``nbytes``."""
        slot = self.slot
        slot.add(_ROUNDS)
        slot.observe(_ROUND_BATCHES, batches)
        slot.observe(_ROUND_BYTES, nbytes)

    def logs(self, logs, full: bool) -> None:
        """The watermarks of ``logs`` are being reported (``full``: the
        periodic report of every log; also the heartbeat and sizes)."""
        w, rows = self.slot.w, self._rows
        for plog in logs:
            at = rows.get(plog.key)
            hwm = plog.high_watermark
            if at is None:
                at = self.slot.row(*plog.key)
                if at < 0:
                    continue
                rows[plog.key] = at
                if not self._recovered:  # what recovery found did not come in since the start
                    w[at + _END] = hwm
            if hwm > w[at + _END]:
                w[at + _IN_MESSAGES] += hwm - w[at + _END]
            w[at + _END] = hwm
            w[at + _START] = plog.earliest_offset
            if full:
                w[at + _SIZE] = sum(seg.size for seg in plog.segments())
        if full:
            self._recovered = True
            self.slot.beat()


class TimedFileSystem(FileSystem):
    """The real file calls, with each fdatasync's duration observed in the
    writer's ``fdatasync_seconds`` histogram.  The I/O threads call it, so
    the observation takes a lock (uncontended but for simultaneous syncs,
    and never held across a syscall)."""

    def __init__(self, slot: Slot):
        self._slot = slot
        self._lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        t0 = time.perf_counter()
        try:
            super().fdatasync(fd)
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self._slot.observe(_FSYNC, dt)
