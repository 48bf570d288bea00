"""``hpbroker-bench log``: the log append + group commit path against the disk.

What is measured: pre-encoded batches (the producer's work, done before the
clock starts) go through ``GroupCommit.append`` into one partition's log
(copy into the O_DIRECT staging buffer, stamp, sparse index) with group
commit flushes (write + fdatasync, ``durable`` mode) until every byte is
durable.  The baseline, in the same run and on the same filesystem, is a
plain sequential O_DIRECT write of the same number of bytes from one
aligned buffer, in ``flush_bytes`` chunks, with one fdatasync at the end:
the physical limit.  Each case is run ``--repeat`` times; medians are
reported, each with its ratio to the median baseline.

    hpbroker-bench log [--json] [--mb 512] [--repeat 3] [--dir DIR]
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
    # name, record bytes, batch bytes, direct_io
    ("100B_in_64KiB_direct", 100, 64 << 10, True),
    ("100B_in_64KiB_buffered", 100, 64 << 10, False),
    ("1MiB_batches_direct", 1000, 1 << 20, True),
    ("1MiB_batches_buffered", 1000, 1 << 20, False),
]


def register(sub) -> None:
    p = sub.add_parser("log", help="log append + group commit throughput vs a raw O_DIRECT write baseline")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--mb", type=int, default=512, help="MiB written per case and run (default 512)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; medians are reported (default 3)")
    p.add_argument("--dir", default=None, help="where to put the temp data dir (default: the cwd's filesystem)")
    p.add_argument("--case", action="append", help="run only these cases (repeatable)")
    p.set_defaults(func=run)


def make_batches(record_bytes: int, batch_bytes: int, k: int = 8) -> list[bytes]:
    n = max(1, (batch_bytes - B.HEADER_SIZE) // (record_bytes + B.ENTRY_SIZE))
    out = []
    for i in range(k):
        v = bytes([65 + i]) * record_bytes
        out.append(bytes(B.encode_batch([v] * n, timestamp_ms=1_700_000_000_000 + i)))
    return out


def run_case(root: str, bufs: list[bytes], total: int, direct: bool, progress=None) -> dict:
    cfg = LogConfig(direct_io=direct)
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
                gc.flush()
                flushes += 1
                if progress is not None and flushes % 64 == 0:
                    progress(gc)
        gc.flush()
        dt = time.perf_counter() - t0
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
        for name, rec, bsize, direct in cases:
            bufs = make_batches(rec, bsize)
            runs, bases, same = [], [], []
            cadence = min(LogConfig().flush_bytes, LogConfig().flush_batches * len(bufs[0]))
            for _ in range(args.repeat):
                bases.append(disk_baseline(root, total))
                same.append(disk_baseline(root, total, chunk=cadence, sync_every=cadence))
                if bar:
                    bar.update()
                runs.append(run_case(root, bufs, total, direct))
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
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'case':24} {'records/s':>11} {'MB/s':>6} {'raw O_DIRECT':>12} {'ratio':>5} "
              f"{'raw+same fsyncs':>15} {'ratio':>5}")
        for name, c in out["cases"].items():
            print(f"{name:24} {c['records_per_s']:11,.0f} {c['mb_per_s']:6.0f} {c['disk_baseline_mb_per_s']:12.0f} "
                  f"{c['ratio_to_baseline']:5.2f} {c['disk_same_sync_cadence_mb_per_s']:15.0f} "
                  f"{c['ratio_to_same_sync_cadence']:5.2f}")
    return 0
