"""Where things live on disk.

::

    <data_dir>/
      <topic>-<partition>/                  one directory per topic-partition
        00000000000000000000.log            batches back to back (see batch.py)
        00000000000000000000.index          sparse offset index (offset_index.py)
        00000000000000000000.timeindex      sparse time index (time_index.py)
        00000000000000368769.log            next segment: name = its base offset
        ...
        00000000000000000000.log.deleted    retention took it out; unlinked in the background
        recovery-point                      checkpoint (checkpoint.py)
        archive/                            archived segments (default archive_dir)

File names are the segment's base offset as 20 zero-padded digits (as in
Kafka), so a plain sort is offset order.
"""

from __future__ import annotations

import os
import re

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
CHECKPOINT_NAME = "recovery-point"
#: a segment file retention has taken out of the log, waiting to be unlinked (recovery unlinks leftovers)
DELETED_SUFFIX = ".deleted"
#: a segment's .log retention has taken out under the archive policy, waiting
#: for its gzip copy to be durable (recovery finishes the job)
ARCHIVING_SUFFIX = ".archiving"
_SEG_RE = re.compile(r"^(\d{20})\.log$")
_DIR_RE = re.compile(r"^(.+)-(\d+)$")


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


def log_path(d: str, base: int) -> str:
    return os.path.join(d, segment_name(base) + LOG_SUFFIX)


def index_path(d: str, base: int) -> str:
    return os.path.join(d, segment_name(base) + INDEX_SUFFIX)


def timeindex_path(d: str, base: int) -> str:
    return os.path.join(d, segment_name(base) + TIMEINDEX_SUFFIX)


def partition_dir(data_dir: str, topic: str, partition: int) -> str:
    if not topic or "/" in topic or topic in (".", ".."):
        raise ValueError(f"bad topic name {topic!r}")
    return os.path.join(data_dir, f"{topic}-{int(partition)}")


def parse_partition_dir(name: str) -> tuple[str, int] | None:
    m = _DIR_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def list_segments(d: str) -> list[int]:
    """Base offsets of the ``.log`` files in ``d``, ascending."""
    out = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return out
    for n in names:
        m = _SEG_RE.match(n)
        if m:
            out.append(int(m.group(1)))
    out.sort()
    return out


def list_partitions(data_dir: str) -> list[tuple[str, int]]:
    out = []
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return out
    for n in sorted(names):
        tp = parse_partition_dir(n)
        if tp and os.path.isdir(os.path.join(data_dir, n)):
            out.append(tp)
    return out


def is_partition_dir(d: str) -> bool:
    return bool(list_segments(d)) or os.path.exists(os.path.join(d, CHECKPOINT_NAME))
