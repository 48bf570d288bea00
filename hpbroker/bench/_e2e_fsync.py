"""``hpbroker-bench --baseline fsync``: the device's own write+fdatasync latency.

A plain loop on one temp file, in the broker's temp dir (the filesystem of
its data dir): a sequential O_DIRECT ``pwrite`` of one bench batch
(``--batch-bytes``, rounded up to 4 KiB) appended at the end of the file,
then ``fdatasync``; each iteration is timed.  The broker's segments are
appended the same way (extending the file, no preallocation), so the
percentiles are what a single durable group commit of one batch costs on
this device at that moment: the floor under the broker's ack latency.

The page-aligned buffer and the O_DIRECT open (with its logged buffered
fallback) are the storage engine's own helpers, the ones the log bench's
``disk_baseline`` uses (``hpbroker.bench.log`` imports them from
``hpbroker.io.direct``).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from hpbroker.bench.log import aligned_buffer  # the log bench's O_DIRECT buffer helper
from hpbroker.io.direct import align_up, open_append
from hpbroker.io.fs import FileSystem

DEFAULT_ITERATIONS = 2000


def fsync_baseline(root: str, write_bytes: int, iterations: int = DEFAULT_ITERATIONS,
                   max_seconds: float | None = None) -> dict:
    """``iterations`` x (O_DIRECT pwrite of ``write_bytes`` at the file end + fdatasync),
    stopping early after ``max_seconds``; per-iteration percentiles in ms."""
    n = align_up(max(write_bytes, 1))
    buf = aligned_buffer(n)
    buf.write(b"\xab" * n)
    mv = memoryview(buf)[:n]
    fs = FileSystem()
    fd, direct = None, False
    path = tempfile.mktemp(prefix="fsync-baseline-", dir=root)
    lat = np.empty(iterations, dtype=np.float64)
    wr = np.empty(iterations, dtype=np.float64)
    done = 0
    try:
        fd, direct = open_append(fs, path, True)
        pos = 0
        t_start = time.perf_counter()
        stop_at = t_start + max_seconds if max_seconds else float("inf")
        while done < iterations:
            t0 = time.perf_counter()
            pos += os.pwrite(fd, mv, pos)
            t1 = time.perf_counter()
            os.fdatasync(fd)
            t2 = time.perf_counter()
            lat[done] = t2 - t0
            wr[done] = t1 - t0
            done += 1
            if t2 >= stop_at:
                break
        seconds = time.perf_counter() - t_start
    finally:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        mv.release()
        buf.close()
    lat, wr = lat[:done] * 1000.0, wr[:done] * 1000.0
    return {
        "what": f"sequential O_DIRECT pwrite of {n} B (one batch) appended to a temp file + fdatasync, "
                "timed per iteration, same filesystem as the broker's data dir",
        "write_bytes": n,
        "direct": direct,
        "iterations": done,
        "seconds": seconds,
        "mb_per_s": done * n / seconds / 1e6 if seconds else None,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "p999_ms": float(np.percentile(lat, 99.9)),
        "max_ms": float(lat.max()),
        "mean_ms": float(lat.mean()),
        "write_p50_ms": float(np.percentile(wr, 50)),
        "write_p99_ms": float(np.percentile(wr, 99)),
    }
