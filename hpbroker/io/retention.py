"""Retention: drop (or archive) closed segments by age and by total size.

* Age: a closed segment whose largest timestamp (the last entry of its time
  index) is older than ``retention_ms`` goes.  Segments go oldest first and
  the walk stops at the first one that is young enough.
* Size: while the partition is larger than ``retention_bytes``, the oldest
  closed segment goes.
* The active segment is never removed, nor one whose roll is still
  finishing (indexes and checkpoint written off the writer's loop).
* ``retention_policy = "archive"`` writes ``<base>.log.gz`` (gzip,
  stdlib) under ``archive_dir/<topic>-<partition>/`` (default
  ``<partition dir>/archive/``) - temp file, fsync, rename, fsync of the
  directory - and deletes the segment file only once that copy is durable.
  The segment leaves the log at once, its .log renamed to
  ``.log.archiving``, and the gzip runs off the writer's loop: gzip -1 of a
  256 MiB segment takes about a second, and every partition of the writer
  would wait.  A crash in
  between leaves the ``.archiving`` file; recovery archives it then.

Readers in other processes cope with a segment vanishing: they re-list the
directory (see :mod:`hpbroker.io.reader`).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import time

from hpbroker.io.config import LogConfig
from hpbroker.io import layout
from hpbroker.io.fs import DIR_MODE, FILE_MODE, FileSystem

log = logging.getLogger("hpbroker.io")


def expired(plog, cfg: LogConfig, now_ms: int, keep_from: int | None = None) -> int:
    """How many of the oldest segments retention removes now (never one
    holding an offset at or after ``keep_from``)."""
    segs = plog.segments()[:-1]  # never the active one
    if keep_from is not None:
        segs = [s for s in segs if s.next_offset <= keep_from]
    for i, s in enumerate(segs):
        if s.finishing:  # its indexes are still being written off the loop: next check
            segs = segs[:i]
            break
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


def remove_gradually(fs: FileSystem, path: str, chunk: int, pause_s: float, sleep=time.sleep) -> None:
    """Unlink ``path``, first cutting it ``chunk`` bytes at a time from its
    end with ``pause_s`` between cuts (``chunk`` 0: unlink at once).

    Unlinking a 256 MiB segment frees all its blocks in one journal
    transaction.  On a filesystem mounted with ``discard`` (ext4 on this VM)
    the commit of that transaction also trims them, and every partition's
    fdatasync waits for it: at peak with retention deleting, ack p999 was
    59 ms against 24 ms without deletes.  In 16 MiB cuts 5 ms apart it was
    22 ms (docs/storage.md, "Retention").  RocksDB's DeleteScheduler cuts
    big files the same way.  Nothing is synced: a crash leaves a shorter
    ``.deleted`` file, which recovery unlinks."""
    if chunk > 0:
        fd = fs.open(path, os.O_WRONLY)
        try:
            size = os.fstat(fd).st_size
            while size > chunk:
                size -= chunk
                fs.ftruncate(fd, size)
                if pause_s > 0:
                    sleep(pause_s)
        finally:
            fs.close(fd)
    fs.unlink(path)


def remover(fs: FileSystem, cfg: LogConfig):
    """``remove(path)`` as ``cfg`` asks (see :func:`remove_gradually`)."""
    return lambda path: remove_gradually(fs, path, cfg.delete_chunk_bytes, cfg.delete_chunk_pause_ms / 1000)


def archive_file(src_path: str, name: str, dest_dir: str, fs: FileSystem) -> str:
    """gzip ``src_path`` to ``dest_dir/<name>.gz`` durably; returns that path."""
    os.makedirs(dest_dir, mode=DIR_MODE, exist_ok=True)
    dest = os.path.join(dest_dir, name + ".gz")
    tmp = dest + ".tmp"
    with open(src_path, "rb") as src, open(tmp, "wb", opener=lambda p, fl: os.open(p, fl, FILE_MODE)) as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
        raw.flush()
        fs.fsync(raw.fileno())
    fs.rename(tmp, dest)
    fs.fsync_dir(dest_dir)
    return dest


def archive_dir_for(plog, cfg: LogConfig) -> str:
    return archive_dir_of(plog.dir, cfg)


def archive_dir_of(partition_dir: str, cfg: LogConfig) -> str:
    if cfg.archive_dir:
        return os.path.join(cfg.archive_dir, os.path.basename(os.path.normpath(partition_dir)))
    return os.path.join(partition_dir, "archive")


def finish_archiving(path: str, dest_dir: str, fs: FileSystem, remove=None) -> bool:
    """Archive a ``.log.archiving`` file, then unlink it (with ``remove``,
    default ``fs.unlink``); on failure keep it (the next start tries again)
    and say so.  True when done."""
    name = os.path.basename(path)[: -len(layout.ARCHIVING_SUFFIX)]
    try:
        dest = archive_file(path, name, dest_dir, fs)
    except OSError as e:
        log.error("archiving %s failed (%s); the file is kept and archived again at the next start", path, e)
        return False
    try:
        (remove or fs.unlink)(path)
    except OSError as e:  # the copy is durable: recovery archives it again and removes it
        log.warning("could not unlink %s after archiving it: %s", path, e)
    log.info("archived %s to %s", path, dest)
    return True


def apply_retention(plog, cfg: LogConfig, now_ms: int, later, archive_later, keep_from: int | None = None) -> list[int]:
    """Take the expired segments of ``plog`` out of the log; returns their
    base offsets.  The slow part runs off the caller's thread: ``later(paths)``
    unlinks the renamed files (see :meth:`Segment.delete`), and under the
    archive policy ``archive_later(path, dest_dir)`` archives, then unlinks,
    each ``.log.archiving`` file (:func:`finish_archiving`)."""
    archive = None
    if cfg.retention_policy == "archive":
        dest_dir = archive_dir_for(plog, cfg)
        archive = lambda path: archive_later(path, dest_dir)  # noqa: E731
    out = []
    for _ in range(expired(plog, cfg, now_ms, keep_from)):
        out.append(plog.delete_oldest_segment(later, archive).base)
    return out
