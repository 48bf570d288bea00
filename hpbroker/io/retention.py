"""Retention: drop (or archive) closed segments by age and by total size.

* Age: a closed segment whose largest timestamp (the last entry of its time
  index) is older than ``retention_ms`` goes.  Segments go oldest first and
  the walk stops at the first one that is young enough.
* Size: while the partition is larger than ``retention_bytes``, the oldest
  closed segment goes.
* The active segment is never removed.
* ``retention_policy = "archive"`` first writes ``<base>.log.gz`` (gzip,
  stdlib) under ``archive_dir/<topic>-<partition>/`` (default
  ``<partition dir>/archive/``) - temp file, fsync, rename, fsync of the
  directory - and deletes the segment only once that copy is durable.

Readers in other processes cope with a segment vanishing: they re-list the
directory (see :mod:`hpbroker.io.reader`).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil

from hpbroker.config import LogConfig
from hpbroker.io.fs import FileSystem

log = logging.getLogger("hpbroker.io")


def expired(plog, cfg: LogConfig, now_ms: int) -> int:
    """How many of the oldest segments retention removes now."""
    segs = plog.segments()[:-1]  # never the active one
    n = 0
    if cfg.retention_ms >= 0:
        for s in segs:
            if s.max_ts < 0 or now_ms - s.max_ts <= cfg.retention_ms:
                break  # young enough, or no timestamp known: kept
            n += 1
    if cfg.retention_bytes >= 0:
        total = sum(s.size for s in plog.segments())
        for s in segs[:n]:
            total -= s.size
        for s in segs[n:]:
            if total <= cfg.retention_bytes:
                break
            total -= s.size
            n += 1
    return n


def archive_segment(seg, dest_dir: str, fs: FileSystem) -> str:
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, os.path.basename(seg.log_path) + ".gz")
    tmp = dest + ".tmp"
    with open(seg.log_path, "rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
        raw.flush()
        fs.fsync(raw.fileno())
    fs.rename(tmp, dest)
    fs.fsync_dir(dest_dir)
    return dest


def archive_dir_for(plog, cfg: LogConfig) -> str:
    if cfg.archive_dir:
        return os.path.join(cfg.archive_dir, os.path.basename(os.path.normpath(plog.dir)))
    return os.path.join(plog.dir, "archive")


def apply_retention(plog, cfg: LogConfig, now_ms: int, fs: FileSystem | None = None, later=None) -> list[int]:
    """Remove the expired segments of ``plog``; returns their base offsets.
    ``later(paths)``, when given, unlinks the removed files in the background
    (see :meth:`Segment.delete`); archiving itself still happens here."""
    fs = fs or FileSystem()
    n = expired(plog, cfg, now_ms)
    out = []
    for _ in range(n):
        seg = plog.segments()[0]
        if cfg.retention_policy == "archive":
            try:
                path = archive_segment(seg, archive_dir_for(plog, cfg), fs)
            except OSError as e:
                log.error("%s: archiving %s failed (%s); the segment is kept", plog.dir, seg.log_path, e)
                break
            log.info("%s: archived %s to %s", plog.dir, seg.log_path, path)
        plog.delete_oldest_segment(later)
        out.append(seg.base)
    return out
