"""``hpbroker-bench log``: the log append + group commit path against the disk.

What is measured: pre-encoded batches (the producer's work, done before the
clock starts) go through ``GroupCommit.append`` into one partition's log
(copy into the O_DIRECT staging buffer, stamp, sparse index) with group
commit flushes (write + fdatasync, ``durable`` mode) until every byte is
durable.  Cases ending in ``_pipelined`` flush with ``start_flush()`` (the
I/O thread writes and syncs while the next batches are copied); the others
with the blocking ``flush()``.  Both end with a blocking ``flush()``, so
every byte counted is durable.

Baselines, in the same run, on the same filesystem, before each case run:

* raw O_DIRECT: ``os.pwrite`` of the same number of bytes into a new file
  (extending writes, like the log) in 4 MiB chunks from one page-aligned
  buffer, then one ``fdatasync``.  The physical limit.  (1, 4, 8 and
  16 MiB chunks measured the same within noise on the reference VM.)
* raw + same fsyncs: the same, in ``flush_bytes`` chunks with an
  ``fdatasync`` after each (the group commit's cadence).

Each case is run ``--repeat`` times; medians are reported, with the ratio of
the median to the median baseline and the median of the per-run ratios
(each run against the baseline measured just before it).

    hpbroker-bench log [--json] [--mb 512] [--repeat 3] [--dir DIR] [--case NAME]... [--flush-bytes N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from hpbroker import batch as B
from hpbroker.config import LogConfig
from hpbroker.io import GroupCommit, Storage
from hpbroker.io.direct import aligned_buffer

CASES = [
    # name, record bytes, batch bytes, direct_io, pipelined (start_flush/poll instead of blocking flush)
    ("100B_in_64KiB_direct", 100, 64 << 10, True, False),
    ("100B_in_64KiB_buffered", 100, 64 << 10, False, False),
    ("1MiB_batches_direct", 1000, 1 << 20, True, False),
    ("1MiB_batches_buffered", 1000, 1 << 20, False, False),
    ("100B_in_64KiB_direct_pipelined", 100, 64 << 10, True, True),
    ("1MiB_batches_direct_pipelined", 1000, 1 << 20, True, True),
]


def register(sub) -> None:
    p = sub.add_parser("log", help="log append + group commit throughput vs a raw O_DIRECT write baseline")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--mb", type=int, default=512, help="MiB written per case and run (default 512)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; medians are reported (default 3)")
    p.add_argument("--dir", default=None, help="where to put the temp data dir (default: the cwd's filesystem)")
    p.add_argument("--case", action="append", help="run only these cases (repeatable)")
    p.add_argument("--flush-bytes", type=int, default=None, help="override log.flush_bytes (default: the config default)")
    p.set_defaults(func=run)


def make_batches(record_bytes: int, batch_bytes: int, k: int = 8) -> list[bytes]:
    n = max(1, (batch_bytes - B.HEADER_SIZE) // (record_bytes + B.ENTRY_SIZE))
    out = []
    for i in range(k):
        v = bytes([65 + i]) * record_bytes
        out.append(bytes(B.encode_batch([v] * n, timestamp_ms=1_700_000_000_000 + i)))
    return out


def run_case(root: str, bufs: list[bytes], total: int, direct: bool, progress=None, pipelined: bool = False,
             flush_bytes: int | None = None, **log_config) -> dict:
    """One run; ``flush_bytes`` and other ``log_config`` keys override the LogConfig defaults."""
    if flush_bytes is not None:
        log_config["flush_bytes"] = flush_bytes
    cfg = LogConfig(direct_io=direct, **log_config)
    d = tempfile.mkdtemp(prefix="case-", dir=root)
    st = Storage(d, cfg)
    try:
        log = st.partition("bench", 0)
        gc = GroupCommit(cfg)
        k = len(bufs)
        per = len(bufs[0])
        nb = max(1, total // per)
        records = B.peek_count(bufs[0]) * nb
        views = [memoryview(b) for b in bufs]
        flushes = 0
        t0 = time.perf_counter()
        for i in range(nb):
            gc.append(log, views[i % k], 0)
            if gc.due():
                if pipelined:
                    gc.start_flush()
                else:
                    gc.flush()
                flushes += 1
                if progress is not None and flushes % 64 == 0:
                    progress(gc)
        gc.flush()
        dt = time.perf_counter() - t0
        gc.close()
        assert log.high_watermark == log.log_end_offset == records, (log, records)
        return {"seconds": dt, "bytes": nb * per, "records": records, "flushes": flushes + 1,
                "direct": log.direct, "records_per_s": records / dt, "mb_per_s": nb * per / dt / 1e6}
    finally:
        st.close()
        shutil.rmtree(d, ignore_errors=True)


def disk_baseline(root: str, total: int, chunk: int = 4 << 20, sync_every: int = 0) -> dict:
    """Raw sequential O_DIRECT pwrite of ``total`` bytes in ``chunk`` pieces from
    one aligned buffer; fdatasync at the end, and every ``sync_every`` bytes
    when that is given (the same cadence as the group commit)."""
    path = tempfile.mktemp(prefix="baseline-", dir=root)
    buf = aligned_buffer(chunk)
    buf.write(b"\xab" * chunk)
    mv = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o644)
    try:
        t0 = time.perf_counter()
        pos = 0
        next_sync = sync_every or total + 1
        while pos < total:
            pos += os.pwrite(fd, mv, pos)
            if pos >= next_sync:
                os.fdatasync(fd)
                next_sync += sync_every
        os.fdatasync(fd)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
        mv.release()
        buf.close()
    return {"seconds": dt, "bytes": pos, "mb_per_s": pos / dt / 1e6}


def run(args) -> int:
    root = tempfile.mkdtemp(prefix="hpbroker-bench-log-", dir=args.dir or os.getcwd())
    total = args.mb << 20
    cases = [c for c in CASES if not args.case or c[0] in args.case]
    out: dict = {"what": "GroupCommit.append + flush of pre-encoded batches, durable mode (fdatasync before ack), "
                         "one partition, one process; baseline = raw sequential O_DIRECT write of the same bytes",
                 "mb_per_case": args.mb, "repeat": args.repeat, "cases": {}}
    bar = None
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(cases) * args.repeat * 2, desc="log bench", unit="run", file=sys.stderr,
                   disable=None if not args.json else False)
    except ImportError:  # pragma: no cover
        pass
    try:
        for name, rec, bsize, direct, pipelined in cases:
            bufs = make_batches(rec, bsize)
            runs, bases, same = [], [], []
            fb = LogConfig().flush_bytes if args.flush_bytes is None else args.flush_bytes
            cadence = min(fb, LogConfig().flush_batches * len(bufs[0]))
            for _ in range(args.repeat):
                bases.append(disk_baseline(root, total))
                same.append(disk_baseline(root, total, chunk=cadence, sync_every=cadence))
                if bar:
                    bar.update()
                runs.append(run_case(root, bufs, total, direct, pipelined=pipelined, flush_bytes=args.flush_bytes))
                if bar:
                    bar.update()
            base_mb = statistics.median(b["mb_per_s"] for b in bases)
            mb = statistics.median(r["mb_per_s"] for r in runs)
            rps = statistics.median(r["records_per_s"] for r in runs)
            out["cases"][name] = {
                "record_bytes": rec, "batch_bytes": len(bufs[0]), "records_per_batch": B.peek_count(bufs[0]),
                "direct_io": runs[0]["direct"], "records_per_s": rps, "mb_per_s": mb,
                "disk_baseline_mb_per_s": base_mb, "ratio_to_baseline": mb / base_mb,
                "flushes_per_run": runs[0]["flushes"],
                "disk_same_sync_cadence_mb_per_s": statistics.median(b["mb_per_s"] for b in same),
                "sync_cadence_bytes": cadence,
                "ratio_to_same_sync_cadence": mb / statistics.median(b["mb_per_s"] for b in same),
                "median_of_run_ratios": statistics.median(r["mb_per_s"] / b["mb_per_s"] for r, b in zip(runs, bases)),
                "pipelined": pipelined,
                "runs_mb_per_s": [round(r["mb_per_s"], 1) for r in runs],
                "runs_baseline_mb_per_s": [round(b["mb_per_s"], 1) for b in bases],
            }
    finally:
        if bar:
            bar.close()
        shutil.rmtree(root, ignore_errors=True)
    small = out["cases"].get("100B_in_64KiB_direct") or next(iter(out["cases"].values()))
    big = out["cases"].get("1MiB_batches_direct") or small
    out["records_per_s"] = small["records_per_s"]
    out["mb_per_s"] = big["mb_per_s"]
    out["disk_baseline_mb_per_s"] = big["disk_baseline_mb_per_s"]
    piped = out["cases"].get("1MiB_batches_direct_pipelined")
    if piped is not None:
        out["pipelined_mb_per_s"] = piped["mb_per_s"]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'case':32} {'records/s':>11} {'MB/s':>6} {'raw O_DIRECT':>12} {'ratio':>5} {'per-run':>7} "
              f"{'raw+same fsyncs':>15} {'ratio':>5}")
        for name, c in out["cases"].items():
            print(f"{name:32} {c['records_per_s']:11,.0f} {c['mb_per_s']:6.0f} {c['disk_baseline_mb_per_s']:12.0f} "
                  f"{c['ratio_to_baseline']:5.2f} {c['median_of_run_ratios']:7.2f} "
                  f"{c['disk_same_sync_cadence_mb_per_s']:15.0f} {c['ratio_to_same_sync_cadence']:5.2f}")
    return 0
