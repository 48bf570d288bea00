"""``hpbroker-bench tail``: lines/s shipped by ``hpbroker tail`` from one file,
beside ``cat FILE | hpbroker produce TOPIC`` in the same run.

    hpbroker-bench tail                          # 5,000,000 lines of 100 B, 3 rounds
    hpbroker-bench tail --lines 2000000 --rounds 5 --json

It writes one file of ``--lines`` lines of ``--size`` bytes ("\\n"
included), then, in each round, starts a private broker (``python -m
hpbroker serve``, temp data dir, 4 partitions), and runs both commands on
the file, one after the other, the order alternating between rounds:

* ``python -m hpbroker tail --once --quiet --topic T FILE`` (ships the file,
  waits for every acknowledgement, writes its checkpoint, exits);
* ``cat FILE | python -m hpbroker produce T`` (exits once every message is
  acknowledged).

For each: the wall time from spawn to exit (Python's start included, the
same for both), the time from the first record to the last landing in the
broker (its end offsets polled every 20 ms with ``Admin.list_offsets``),
the CPU seconds of the command's processes (user + system, from
``os.wait4``'s rusage: exact, where psutil cannot read a process that has
exited) and of the broker's processes (psutil, over the same span), each
per million lines.  Every count is checked against the broker's end
offsets.  Medians over the rounds; the machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from hpbroker.bench._e2e_broker import CpuSampler, LocalBroker


def register(sub) -> None:
    p = sub.add_parser("tail", help="hpbroker tail's lines/s from one file, beside cat FILE | hpbroker produce")
    p.add_argument("--lines", type=int, default=5_000_000, help="lines in the file (default 5,000,000)")
    p.add_argument("--size", type=int, default=100, help="bytes per line, newline included (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each with a fresh broker; medians are reported (default 3)")
    p.add_argument("--dir", default=None, help="where the temp file and data dirs go (default: the cwd's filesystem)")
    p.add_argument("--tail-arg", action="append", default=[], metavar="ARG",
                   help="an extra argument for hpbroker tail (repeatable), e.g. --tail-arg=--config=x.toml")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def write_file(path: str, lines: int, size: int, progress=None) -> int:
    """``lines`` lines of ``size`` bytes, each starting with its number."""
    pad = b"x" * (size - 11)
    step = 100_000
    with open(path, "wb") as f:
        for start in range(0, lines, step):
            n = min(step, lines - start)
            f.write(b"".join(b"%09d " % i + pad + b"\n" for i in range(start, start + n)))
            if progress is not None:
                progress(n)
        f.flush()
        os.fsync(f.fileno())  # its writeback must not compete with the broker's fdatasyncs in round 1
    return os.path.getsize(path)


class Landed(threading.Thread):
    """Polls the topic's end offsets: when the first record landed, when the last did."""

    def __init__(self, url: str, topic: str, partitions: int, want: int, on_count=None):
        super().__init__(daemon=True)
        self.url, self.topic, self.partitions, self.want = url, topic, partitions, want
        self.on_count = on_count
        self.first = self.last = None
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from hpbroker.client.admin import Admin

        with Admin(self.url) as adm:
            while not self.stop.is_set():
                n = sum(adm.list_offsets(self.topic, p, -1) for p in range(self.partitions))
                now = time.perf_counter()
                if n and self.first is None:
                    self.first = now
                if n > self.count and self.on_count:
                    self.on_count(n - self.count)
                self.count = n
                if n >= self.want:
                    self.last = now
                    return
                self.stop.wait(0.02)


def _rusage_cpu(pid: int) -> tuple[int, float]:
    _, status, ru = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime


def measure(broker: LocalBroker, what: str, path: str, lines: int, root: str, extra: list[str], bar) -> dict:
    from hpbroker.client.admin import Admin

    topic = f"{what}-{time.monotonic_ns()}"
    with Admin(broker.url) as adm:
        parts = adm.create_topic(topic, 4)
    landed = Landed(broker.url, topic, parts, lines, on_count=bar.update if bar else None)
    sampler = CpuSampler(broker.processes())
    py = [sys.executable, "-m", "hpbroker"]
    landed.start()
    sampler.start()
    t0 = time.perf_counter()
    if what == "tail":
        state = os.path.join(root, topic + ".state")
        p = subprocess.Popen([*py, "tail", "--broker", broker.url, "--topic", topic, "--state-dir", state, "--once",
                              "--quiet", *extra, path], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        code, cpu = _rusage_cpu(p.pid)
        err = p.stderr.read().decode(errors="replace")
        p.returncode = code
        helper_cpu = 0.0
    else:
        cat = subprocess.Popen(["cat", path], stdout=subprocess.PIPE)
        p = subprocess.Popen([*py, "produce", topic, "--broker", broker.url], stdin=cat.stdout, stderr=subprocess.PIPE)
        cat.stdout.close()
        code, cpu = _rusage_cpu(p.pid)
        _, helper_cpu = _rusage_cpu(cat.pid)
        err = p.stderr.read().decode(errors="replace")
    wall = time.perf_counter() - t0
    sampler.stop()
    landed.join(30)
    landed.stop.set()
    if code != 0:
        raise RuntimeError(f"{what} exited {code}: {err.strip()[-500:]}")
    with Admin(broker.url) as adm:
        count = sum(adm.list_offsets(topic, q, -1) for q in range(parts))
    if count != lines:
        raise RuntimeError(f"{what}: the broker holds {count} records, expected {lines}")
    span = (landed.last - landed.first) if landed.first and landed.last else None
    broker_cpu = sum(v for v in (sampler.c1[n] - sampler.c0[n] for n in sampler.procs
                                 if sampler.c0.get(n) is not None and sampler.c1.get(n) is not None))
    m = lines / 1e6
    return {
        "wall_s": round(wall, 3),
        "lines_per_s": round(lines / wall),
        "landing_s": None if span is None else round(span, 3),
        "landing_lines_per_s": None if not span else round(lines / span),
        "cpu_s_per_m_lines": round((cpu + helper_cpu) / m, 3),
        "cpu_s_per_m_lines_helper": round(helper_cpu / m, 3),
        "broker_cpu_s_per_m_lines": round(broker_cpu / m, 3),
    }


def run(args) -> int:
    root = tempfile.mkdtemp(prefix="hpbroker-bench-tail-", dir=args.dir or os.getcwd())
    bar = None
    try:
        path = os.path.join(root, "file.log")
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=args.lines, desc="writing the file", unit="line", unit_scale=True, file=sys.stderr,
                       dynamic_ncols=True)
        nbytes = write_file(path, args.lines, args.size, bar.update if bar else None)
        rounds = []
        for r in range(args.rounds):
            order = ("tail", "produce") if r % 2 == 0 else ("produce", "tail")
            broker = LocalBroker(root, ["--partitions", "4"]).start()
            try:
                res = {}
                for what in order:
                    if bar is not None:
                        bar.close()
                        bar = tqdm(total=args.lines, desc=f"round {r + 1}/{args.rounds}: {what}", unit="line",
                                   unit_scale=True, file=sys.stderr, dynamic_ncols=True)
                    res[what] = measure(broker, what, path, args.lines, root, args.tail_arg, bar)
                rounds.append(res)
            finally:
                broker.stop()
                left = broker.cleanup()
                if left:
                    print(f"hpbroker-bench tail: the broker left {left} in /dev/shm (unlinked)", file=sys.stderr)
        if bar is not None:
            bar.close()
            bar = None
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(root, ignore_errors=True)

    def med(what, key):
        vals = [r[what][key] for r in rounds if r[what][key] is not None]
        return statistics.median(vals) if vals else None

    def rng(what, key):
        vals = [r[what][key] for r in rounds if r[what][key] is not None]
        return (min(vals), max(vals)) if vals else None

    keys = ("lines_per_s", "landing_lines_per_s", "cpu_s_per_m_lines", "broker_cpu_s_per_m_lines", "wall_s")
    summary = {w: {k: med(w, k) for k in keys} | {k + "_range": rng(w, k) for k in keys} for w in ("tail", "produce")}
    out = {"lines": args.lines, "size": args.size, "bytes": nbytes, "rounds": rounds, "median": summary,
           "tail_over_produce": round(summary["tail"]["lines_per_s"] / summary["produce"]["lines_per_s"], 2)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.lines:,} lines of {args.size} B ({nbytes / 1e6:.0f} MB), {args.rounds} rounds, medians (min-max):")
    for w, label in (("tail", "hpbroker tail --once FILE"), ("produce", "cat FILE | hpbroker produce")):
        s = summary[w]
        lo, hi = s["lines_per_s_range"]
        llo, lhi = s["landing_lines_per_s_range"] or (0, 0)
        print(f"  {label:<30} {s['lines_per_s']:>12,.0f} lines/s ({lo:,.0f}-{hi:,.0f}) spawn to exit; "
              f"{s['landing_lines_per_s'] or 0:,.0f} lines/s ({llo:,.0f}-{lhi:,.0f}) first to last record; "
              f"CPU {s['cpu_s_per_m_lines']:.3f} s per M lines (broker {s['broker_cpu_s_per_m_lines']:.3f})")
    print(f"  tail / produce: {out['tail_over_produce']:.2f}")
    return 0
