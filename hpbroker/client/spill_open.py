"""Opening a spill directory: its segments read back, checked, and turned into the journal's state.

:func:`open_segments` is the first thing a
:class:`~hpbroker.client.spill.SpillJournal` does once it holds the
directory's ``LOCK``: it finds the segment files, scans each one
(:func:`~hpbroker.client.spill_format.scan_segment`), cuts a torn tail,
and rebuilds what the journal keeps in memory - the segments and their
acknowledgement flags, the next seq, the unacknowledged records by
(topic, partition), the ``F`` records still to send.

Opening
-------

Every segment is read and every frame's CRC checked.  A bad frame at the end
of the *last* segment, with no valid frame after it, is a torn tail (a write
a crash interrupted, never made durable): the file is cut there, the cut
fsynced, a warning logged.  Anything else - a bad frame followed by a valid
one, a bad frame in an earlier segment, a good CRC over a record that does
not parse, a segment missing between two others - raises
:class:`~hpbroker.client.framing.JournalCorrupt` naming the file and the
offset, and nothing is dropped.  Opening reads everything once: about 2 s
per million spilled messages on the test VM (docs/performance.md).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from hpbroker.client import framing
from hpbroker.client.framing import JournalCorrupt
from hpbroker.client.spill_format import SpillRecord, scan_segment, topic_name
from hpbroker.client.spill_segment import SEGMENT_NAME, Segment, mark_acked, segment_path

if TYPE_CHECKING:
    from hpbroker.client.spill import SpillJournal

log = logging.getLogger("hpbroker.client")


def open_segments(j: SpillJournal) -> None:
    """Fill ``j`` (just locked, with no segments yet) from the segment files
    of its directory, or create the first segment of an empty one; leaves
    ``j``'s write descriptor open on the last segment."""
    found = []
    for name in os.listdir(j.directory):
        m = SEGMENT_NAME.match(name)
        if m:
            found.append(int(m.group(1)))
        elif name.endswith(".spill"):
            raise JournalCorrupt(f"spill journal {j.directory}: {name} is not a segment name this version "
                                 "writes; move it aside")
    found.sort()
    if not found:
        seg = Segment(0, segment_path(j.directory, 0))
        j._fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        framing.fsync_dir(j.directory)
        j.segments.append(seg)
        return
    acks: list[np.ndarray] = []
    key_ids: dict[tuple[bytes, int], int] = {}  # (topic bytes, partition) -> a small id
    first_at: list[tuple[Segment, int]] = []  # where each key was first seen (for an error)
    per_segment_keys: list[np.ndarray] = []
    fronts: list[SpillRecord] = []
    for i, base in enumerate(found):
        seg = Segment(base, segment_path(j.directory, base))
        last = i == len(found) - 1
        if j.segments and base != j.segments[-1].end:
            prev = j.segments[-1]
            raise JournalCorrupt(f"spill journal {seg.path}: starts at record {base}, but {prev.path} ends at "
                                 f"record {prev.end}: a segment is missing or was cut; nothing was dropped")
        with open(seg.path, "rb") as f:
            buf = f.read()  # one segment at a time: at most segment_bytes (plus one group) in memory
        scan, ids = scan_segment(buf, seg, last, key_ids, first_at, fronts, acks, j._names)
        seg.size = scan.end
        seg.grow(len(ids))
        per_segment_keys.append(np.array(ids, dtype=np.int64))
        if scan.end < len(buf):
            log.warning("spill journal %s: cut a torn tail of %d bytes at offset %d (%s; a write a crash "
                        "interrupted, never made durable)", seg.path, len(buf) - scan.end, scan.end, scan.why)
            with open(seg.path, "r+b") as f:
                f.truncate(scan.end)
                os.fsync(f.fileno())
            j.truncated_bytes = len(buf) - scan.end
        j.segments.append(seg)
    j.next_seq = j.segments[-1].end
    j._fd = os.open(j.segments[-1].path, os.O_RDWR | os.O_CLOEXEC)
    for arr in acks:
        mark_acked(j.segments, arr)
    keys = [None] * len(key_ids)
    for (tb, partition), kid in key_ids.items():
        topic = j._names.get(tb)
        if topic is None:
            topic = j._names[tb] = topic_name(tb, *first_at[kid])
        keys[kid] = (topic, partition)
    counts = np.zeros(len(key_ids), dtype=np.int64)
    for seg, ids in zip(j.segments, per_segment_keys):
        if len(ids):
            counts += np.bincount(ids[~seg.acked[: seg.count]], minlength=len(key_ids))
    j.pending = {keys[i]: int(c) for i, c in enumerate(counts.tolist()) if c}
    j.recovered = int(counts.sum())
    for r in fronts:
        seg = next(s for s in reversed(j.segments) if s.base <= r.seq)
        if not seg.acked[r.seq - seg.base]:
            j.front.append(r)
    j._collect()
