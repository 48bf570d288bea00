"""``hpbroker-bench groups``: consumer groups, each figure beside a same-run
baseline, on a private broker (``python -m hpbroker serve`` on a free
loopback port, data in a temp dir under ``--dir``, stopped by pid).

Sections (``--sections``, default all three):

``throughput``
    A 12-partition topic (``--partitions``) is filled once with
    ``--messages`` records of ``--size`` bytes.  Then, for 1, 2 and 4
    reader processes (``--members``), two runs per round, interleaved
    (group first in rounds 1, 3, 5, ..., no group first in the others) over
    ``--rounds``, after one untimed read of the whole topic (``--no-warmup``
    skips it): **group** - the processes join a fresh group with
    auto-commit on (every ``--auto-commit-interval-ms``) - against **no
    group** - the same processes, each ``Consumer(url, topic,
    partitions=[...])`` with a fixed split.  Every run first sets up
    (joins and waits until the group is stable: every partition held,
    balanced, unchanged for two heartbeat intervals; positions at the end of
    the log), then at "go" each process seeks its partitions to 0 and reads
    to the end; the clock runs from go until the last process is done.
    Both read with ``poll_batches`` (``record_count``: no per-record Python
    work), and, with ``--api poll`` (on by default), ``poll()`` too, over the
    first ``--poll-messages`` of the topic.  Figures: median aggregate
    msgs/s of each, and the median of the rounds' group/no-group ratios;
    CPU% of every broker process and reader over the run, and CPU seconds
    per million records (readers, broker).

``rebalance``
    Two member processes own the 12 partitions (6 each); ``--rebalance-rounds``
    times each: **leave** - one calls ``close()``: the time from the start
    of ``close()`` until the other's ``on_assign`` has given it all 12;
    **kill** - one is killed with SIGKILL: the time from the kill until the
    survivor's ``on_assign`` has given it all 12 (bounded by the members'
    ``--session-timeout-ms``).  Each starts at a random point of the
    heartbeat cycle.  Median, p90, max.

``commit``
    A lone member (it owns every partition; auto-commit off) calls
    ``commit()`` in a tight loop with a changed offset of one partition, then
    of all 12; interleaved with it, in the same process, the baseline:
    single-record Produce requests with acks=all, through ``Transport.call``
    (the synchronous client path a commit takes) and through
    ``Producer.send().get()``.  A commit is an acks=all record of
    ``__consumer_offsets``, so both wait for the same durable group commit.
    p50/p99/max latency and calls/s, ``--commit-seconds`` per case.

    hpbroker-bench groups [--messages N] [--size B] [--members 1,2,4] [--rounds R]
                          [--api batches,poll] [--poll-messages N] [--rebalance-rounds R]
                          [--session-timeout-ms MS] [--commit-seconds S] [--sections ...] [--json]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import signal
import statistics
import sys
import time

import numpy as np

DEFAULT_MESSAGES = 24_000_000
DEFAULT_POLL_MESSAGES = 2_400_000
SECTIONS = ("throughput", "rebalance", "commit")


def register(sub) -> None:
    p = sub.add_parser("groups", help="consumer groups: group vs no-group consumption, rebalance times after a leave "
                                      "and a kill -9, commit latency vs acks=all produce (same-run baselines)")
    add_arguments(p)
    p.set_defaults(func=run)


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--members: expected a comma-separated list of counts such as 1,2,4, got {text!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"--members: every count must be >= 1, got {text!r}")
    return out


def _names(text: str, allowed, flag: str) -> list[str]:
    out = [x.strip() for x in str(text).split(",") if x.strip()]
    bad = [x for x in out if x not in allowed]
    if not out or bad:
        raise ValueError(f"{flag}: expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
    return out


def add_arguments(p) -> None:
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default all)")
    p.add_argument("--messages", type=int, default=DEFAULT_MESSAGES,
                   help=f"records in the topic, read whole by each poll_batches run (default {DEFAULT_MESSAGES:,})")
    p.add_argument("--size", type=int, default=100, help="record value bytes (default 100)")
    p.add_argument("--partitions", type=int, default=12, help="partitions of the bench topic (default 12)")
    p.add_argument("--members", default="1,2,4", help="reader process counts to measure (default 1,2,4)")
    p.add_argument("--rounds", type=int, default=5, help="group/no-group pairs per reader count (default 5)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed first read of the whole topic before the pairs")
    p.add_argument("--api", default="batches,poll",
                   help="read with poll_batches, poll() or both (default batches,poll)")
    p.add_argument("--poll-messages", type=int, default=DEFAULT_POLL_MESSAGES,
                   help=f"records read by each poll() run: the first N/partitions of every partition "
                        f"(default {DEFAULT_POLL_MESSAGES:,})")
    p.add_argument("--max-records", type=int, default=500, help="poll(max_records=) (default 500, kafka-python's)")
    p.add_argument("--fetch-max-bytes", type=int, default=8 << 20, help="consumer fetch_max_bytes (default 8 MiB)")
    p.add_argument("--auto-commit-interval-ms", type=int, default=1000,
                   help="group runs' auto_commit_interval_ms (default 1000, so a run of a few seconds commits)")
    p.add_argument("--rebalance-rounds", type=int, default=10, help="rounds of each rebalance case (default 10)")
    p.add_argument("--session-timeout-ms", type=int, default=3000,
                   help="members' session_timeout_ms, which bounds the kill -9 case (default 3000)")
    p.add_argument("--heartbeat-interval-ms", type=int,
                   help="the broker's groups.heartbeat_interval_ms (default: the broker's, 500)")
    p.add_argument("--commit-seconds", type=float, default=3.0, help="seconds per commit/produce case (default 3)")
    p.add_argument("--commit-rounds", type=int, default=3,
                   help="the commit cases are interleaved in this many rounds (default 3)")
    p.add_argument("--dir", help="where the temp data dir goes (default: the cwd's filesystem)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def _say(args, text: str) -> None:
    if not args.no_progress:
        print(text, file=sys.stderr, flush=True)


def _validate(args) -> None:
    args.sections = _names(args.sections, SECTIONS, "--sections")
    args.api = _names(args.api, ("batches", "poll"), "--api")
    args.members = _ints(args.members)
    if args.size < 1 or args.partitions < 1 or args.partitions > 63:
        raise ValueError("--size must be >= 1 and --partitions in [1, 63]")
    if args.rounds < 1 or args.rebalance_rounds < 1 or args.commit_rounds < 1:
        raise ValueError("--rounds, --rebalance-rounds and --commit-rounds must be >= 1")
    if args.messages < 2 * args.partitions or args.poll_messages < args.partitions:
        raise ValueError("--messages must be >= 2 per partition and --poll-messages >= 1 per partition")
    if max(args.members) > args.partitions:
        raise ValueError(f"--members: at most --partitions ({args.partitions}) readers")
    if args.session_timeout_ms < 1 or args.commit_seconds <= 0:
        raise ValueError("--session-timeout-ms and --commit-seconds must be > 0")
    if args.heartbeat_interval_ms is not None and args.heartbeat_interval_ms < 10:
        raise ValueError("--heartbeat-interval-ms must be >= 10")


def heartbeat_interval_ms(args) -> int:
    if args.heartbeat_interval_ms is not None:
        return args.heartbeat_interval_ms
    from hpbroker.config import GroupsConfig

    return GroupsConfig().heartbeat_interval_ms


def run(args) -> int:
    _validate(args)
    from hpbroker.bench import _e2e_broker as EB

    hb = heartbeat_interval_ms(args)
    broker = EB.LocalBroker(args.dir, ["--partitions", str(args.partitions)])
    cfg_path = os.path.join(broker.root, "groups-bench.toml")
    with open(cfg_path, "w") as f:  # the members' session timeout must be within the broker's bounds
        f.write(f"[groups]\nheartbeat_interval_ms = {hb}\nmin_session_timeout_ms = {min(1000, args.session_timeout_ms)}\n")
    broker.serve_args += ["--config", cfg_path]
    result: dict = {
        "what": "consumer groups against same-run baselines: group vs fixed-split consumption, rebalance times, "
                "commit latency vs acks=all produce",
        "broker": "private (python -m hpbroker serve), 127.0.0.1",
        "heartbeat_interval_ms": hb,
        "session_timeout_ms": args.session_timeout_ms,
        "partitions": args.partitions,
        "size": args.size,
        "sections": args.sections,
        "cpus": os.cpu_count(),
    }
    ok = True
    try:
        broker.start()
        procs = broker.processes()
        result["broker_port"] = broker.port
        result["broker_pids"] = {n: p.pid for n, p in procs.items()}
        topic = f"bench-groups-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
        from hpbroker.client import Admin

        with Admin(broker.url) as adm:
            nparts = adm.create_topic(topic, args.partitions, if_not_exists=True)
        messages = args.messages if "throughput" in args.sections else max(2 * nparts, min(args.messages, 120_000))
        _say(args, f"filling {topic}: {messages:,} x {args.size} B over {nparts} partitions")
        t = time.monotonic()
        ends = fill(broker.url, topic, nparts, messages, args.size)
        result["fill_seconds"] = time.monotonic() - t
        result["messages"] = sum(ends)
        if "throughput" in args.sections:
            result["throughput"] = throughput(args, broker.url, topic, nparts, ends, procs, hb)
            ok = ok and all(row["ok"] for rows in result["throughput"]["by_api"].values() for row in rows)
        if "rebalance" in args.sections:
            result["rebalance"] = rebalance(args, broker.url, topic, nparts, hb)
            ok = ok and result["rebalance"]["ok"]
        if "commit" in args.sections:
            result["commit"] = commits(args, broker.url, topic, nparts)
    finally:
        rc = broker.stop()
        left = broker.cleanup()
        result["broker_exit_code"] = rc
        result["shm_left_behind"] = left
        if left:
            print(f"hpbroker-bench groups: the broker left {len(left)} shared-memory objects; unlinked: {left}",
                  file=sys.stderr)
    result["ok"] = bool(ok and rc == 0 and not left)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["ok"] else 1


def fill(url: str, topic: str, nparts: int, messages: int, size: int) -> list[int]:
    """``messages`` records, spread evenly, in 256 KiB batches; -> every
    partition's end offset."""
    from hpbroker.bench import _e2e_workers as W
    from hpbroker.client import Admin, Producer
    from hpbroker.protocol.messages import LATEST

    per_batch = W.records_per_batch(size, 256 << 10)
    values = W._value_pool(size, per_batch, 1)[0]
    share = [messages // nparts + (1 if p < messages % nparts else 0) for p in range(nparts)]
    p = Producer(url, acks=1, linger_ms=2, batch_size=256 << 10, request_timeout_ms=60_000)
    try:
        left = list(share)
        while any(left):
            for part in range(nparts):
                k = min(per_batch, left[part])
                if k:
                    p.send_batch(topic, values if k == per_batch else values[:k], partition=part)
                    left[part] -= k
        p.flush(120)
    finally:
        p.close(10)
    with Admin(url) as adm:
        ends = [adm.list_offsets(topic, part, LATEST) for part in range(nparts)]
    if ends != share:
        raise RuntimeError(f"the fill left {ends} in the log, not {share}")
    return ends


# -- waiting for a group --------------------------------------------------------------------------


def _popcount(x: int) -> int:
    return bin(x).count("1")


def wait_stable(masks, k: int, nparts: int, hold_s: float, timeout_s: float, check=None) -> float:
    """Wait until the ``k`` masks cover every partition once, balanced
    (counts differ by at most 1), unchanged for ``hold_s``; -> seconds waited.
    ``check()``: raises when a worker failed."""
    full = (1 << nparts) - 1
    t0 = time.monotonic()
    since, last = None, None
    while True:
        now = time.monotonic()
        ms = [masks[i] for i in range(k)]
        counts = [_popcount(m) for m in ms]
        union = 0
        for m in ms:
            union |= m
        good = sum(counts) == nparts and union == full and max(counts) - min(counts) <= 1
        if good and ms == last:
            if now - since >= hold_s:
                return now - t0
        else:
            since, last = (now, ms) if good else (None, None)
        if now - t0 > timeout_s:
            raise RuntimeError(f"the group did not settle in {timeout_s:.0f} s: masks {[bin(m) for m in ms]}")
        if check is not None:
            check()
        time.sleep(0.01)


class Inbox:
    """The workers' shared result queue, read by predicate: results that do
    not match are kept for a later :meth:`take` (two members' answers may
    arrive in either order)."""

    def __init__(self, q):
        self.q = q
        self.kept: list[dict] = []

    def take(self, pred, timeout_s: float, procs=()) -> dict:
        """The first result for which ``pred`` holds; raises on a worker's
        error report, on a worker that exited, or after ``timeout_s``."""
        for i, r in enumerate(self.kept):
            if pred(r):
                return self.kept.pop(i)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                r = self.q.get(timeout=0.2)
            except queue.Empty:
                for p in procs:
                    if p.exitcode not in (None, 0):
                        raise RuntimeError(f"{p.name} exited with {p.exitcode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no answer from the bench workers in {timeout_s:.0f} s") from None
                continue
            if r.get("error"):
                raise RuntimeError(f"bench {r.get('kind')} {r.get('idx', '')} failed: {r['error']}")
            if pred(r):
                return r
            self.kept.append(r)


def _stop_workers(procs, cmd_qs) -> None:
    for q in cmd_qs:
        try:
            q.put(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(20)
        if p.is_alive():
            p.kill()
            p.join(5)


# -- throughput ---------------------------------------------------------------------------------


def throughput(args, url, topic, nparts, ends, bprocs, hb_ms) -> dict:
    import psutil

    from hpbroker.bench import _e2e_broker as EB
    from hpbroker.bench import _groups_workers as W

    mp = multiprocessing.get_context("spawn")
    kmax = max(args.members)
    masks = mp.RawArray("q", kmax)
    counts = mp.RawArray("q", kmax)
    go = mp.RawValue("q", -1)
    result_q = mp.Queue()
    inbox = Inbox(result_q)
    cmd_qs = [mp.Queue() for _ in range(kmax)]
    cfg = {"fetch_max_bytes": args.fetch_max_bytes, "session_timeout_ms": args.session_timeout_ms,
           "auto_commit_interval_ms": args.auto_commit_interval_ms, "max_records": args.max_records}
    procs = [mp.Process(target=W.reader_main, args=(i, url, topic, cfg, cmd_qs[i], result_q, masks, counts, go),
                        name=f"bench-reader{i}", daemon=True) for i in range(kmax)]
    for p in procs:
        p.start()
    per = -(-args.poll_messages // nparts)
    api_ends = {"batches": list(ends), "poll": [min(e, per) for e in ends]}
    hold = 2 * hb_ms / 1000.0
    out: dict = {"messages": {a: sum(api_ends[a]) for a in args.api}, "rounds": args.rounds, "members": args.members,
                 "auto_commit_interval_ms": args.auto_commit_interval_ms, "max_records": args.max_records,
                 "fetch_max_bytes": args.fetch_max_bytes, "stable_hold_s": hold, "by_api": {}}
    run_id = 0

    def check():
        for p in procs:
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"{p.name} exited with {p.exitcode}")
        try:
            r = result_q.get_nowait()
        except queue.Empty:
            return
        raise RuntimeError(f"bench reader {r.get('idx')} failed: {r.get('error') or r}")

    def one(k: int, mode: str, api: str) -> dict:
        nonlocal run_id
        run_id += 1
        group = f"bench-groups-{os.getpid()}-{run_id}" if mode == "group" else None
        for i in range(k):
            cmd_qs[i].put({"run": run_id, "group": group, "api": api, "ends": api_ends[api],
                           "parts": None if group else list(range(i, nparts, k))})
        settled = wait_stable(masks, k, nparts, hold if group else 0.0, 60.0, check)
        sampler = EB.CpuSampler({**bprocs, **{f"reader{i}": psutil.Process(procs[i].pid) for i in range(k)}})
        sampler.start()
        t_go = time.monotonic()
        go.value = run_id
        res = [inbox.take(lambda r: r.get("run") == run_id, 600, procs) for _ in range(k)]
        sampler.stop()
        for i in range(k):
            cmd_qs[i].put("close")
        deadline = time.monotonic() + 30
        while any(masks[i] for i in range(k)) and time.monotonic() < deadline:
            time.sleep(0.01)
        secs = max(r["t1"] for r in res) - t_go
        n = sum(r["messages"] for r in res)
        want = sum(api_ends[api])
        moved = any(r["rebalanced_while_reading"] for r in res)
        cpu = sampler.cpu_percent()
        broker_cpu_s = sum(v for name, v in cpu.items() if not name.startswith("reader") and v is not None) * secs / 100
        row = {"mode": mode, "members": k, "api": api, "messages": n, "seconds": secs, "msgs_per_s": n / secs,
               "settle_seconds": settled, "cpu_percent": cpu,
               # CPU seconds per million records: what the readers and the broker spent, whatever share of the
               # machine they got (on a busy 2-core host the rate follows the share; this does not)
               "cpu_s_per_m_msgs": {"readers": sum(r["cpu_s"] for r in res) / n * 1e6 if n else None,
                                    "broker": broker_cpu_s / n * 1e6 if n else None},
               "reader_cpu_percent": [round(100 * r["cpu_s"] / max(r["t1"] - r["t0"], 1e-9), 1) for r in res],
               "start_skew_ms": (max(r["t0"] for r in res) - t_go) * 1000,
               "partitions_per_reader": [len(r["partitions"]) for r in res],
               "rebalanced_while_reading": moved,
               "commits": sum(r["commits"] or 0 for r in res) if group else None,
               "ok": (n == want if api == "batches" else n >= want) and not moved}
        return row

    try:
        if args.warmup:
            # the first read of the topic maps its segments and faults their pages in, in the broker: that
            # run is slower whichever mode it is, so it is made once, untimed, before the pairs
            t = time.monotonic()
            one(kmax, "nogroup", "batches")
            out["warmup_seconds"] = time.monotonic() - t
            _say(args, f"throughput: warm-up read of the whole topic by {kmax} reader(s), {out['warmup_seconds']:.1f} s")
        for api in args.api:
            rows = out["by_api"][api] = []
            for k in args.members:
                pairs = []
                for r in range(args.rounds):
                    order = ("group", "nogroup") if r % 2 == 0 else ("nogroup", "group")
                    got = {}
                    for mode in order:
                        got[mode] = one(k, mode, api)
                        _say(args, f"throughput {api}: {k} reader(s), {mode:8s} round {r + 1}/{args.rounds}: "
                                   f"{got[mode]['msgs_per_s'] / 1e6:6.2f} M msgs/s in {got[mode]['seconds']:.2f} s")
                    pairs.append({"first": order[0], "group": got["group"], "nogroup": got["nogroup"],
                                  "ratio": got["group"]["msgs_per_s"] / got["nogroup"]["msgs_per_s"]})
                rows.append(_summary(k, api, pairs))
    finally:
        _stop_workers(procs, cmd_qs)
    return out


def _mean_cpu(runs: list[dict]) -> dict:
    names = {n for r in runs for n in r["cpu_percent"]}
    out = {}
    for n in sorted(names):
        vals = [r["cpu_percent"].get(n) for r in runs if r["cpu_percent"].get(n) is not None]
        out[n] = round(statistics.fmean(vals), 1) if vals else None
    return out


def _summary(k: int, api: str, pairs: list[dict]) -> dict:
    g = [p["group"] for p in pairs]
    ng = [p["nogroup"] for p in pairs]
    ratios = [p["ratio"] for p in pairs]
    commits = [r["commits"] for r in g if r["commits"] is not None]
    return {
        "members": k, "api": api,
        "group_msgs_per_s": statistics.median(r["msgs_per_s"] for r in g),
        "nogroup_msgs_per_s": statistics.median(r["msgs_per_s"] for r in ng),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "group_runs_msgs_per_s": [r["msgs_per_s"] for r in g],
        "nogroup_runs_msgs_per_s": [r["msgs_per_s"] for r in ng],
        "group_seconds": statistics.median(r["seconds"] for r in g),
        "settle_seconds": statistics.median(r["settle_seconds"] for r in g),
        "auto_commits_per_run": statistics.median(commits) if commits else None,
        "group_cpu_s_per_m_msgs": {k: statistics.median(r["cpu_s_per_m_msgs"][k] for r in g) for k in ("readers", "broker")},
        "nogroup_cpu_s_per_m_msgs": {k: statistics.median(r["cpu_s_per_m_msgs"][k] for r in ng)
                                     for k in ("readers", "broker")},
        "group_cpu_percent": _mean_cpu(g),
        "nogroup_cpu_percent": _mean_cpu(ng),
        "pairs": pairs,
        "ok": all(r["ok"] for r in g + ng),
    }


# -- rebalances ---------------------------------------------------------------------------------


def _stats_ms(xs: list[float]) -> dict:
    a = np.array(xs, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min()),
            "max_ms": float(a.max()), "runs_ms": [round(x, 1) for x in xs]}


def rebalance(args, url, topic, nparts, hb_ms) -> dict:
    from hpbroker.bench import _groups_workers as W

    mp = multiprocessing.get_context("spawn")
    masks = mp.RawArray("q", 2)
    stamps = mp.RawArray("d", 2)
    armed = mp.RawArray("b", 2)
    result_q = mp.Queue()
    inbox = Inbox(result_q)
    cfg = {"fetch_max_bytes": 1 << 20, "session_timeout_ms": args.session_timeout_ms,
           "auto_commit_interval_ms": args.auto_commit_interval_ms}
    members: list = [None, None]
    cmd_qs: list = [None, None]

    def spawn(i: int) -> None:
        cmd_qs[i] = mp.Queue()
        masks[i] = 0
        members[i] = mp.Process(target=W.member_main, args=(i, url, topic, nparts, cfg, cmd_qs[i], result_q, masks,
                                                            stamps, armed), name=f"bench-member{i}", daemon=True)
        members[i].start()

    def check():
        for p in members:
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"{p.name} exited with {p.exitcode}")

    hold = 2 * hb_ms / 1000.0
    out: dict = {"rounds": args.rebalance_rounds, "session_timeout_ms": args.session_timeout_ms,
                 "heartbeat_interval_ms": hb_ms}
    spawn(0)
    spawn(1)
    try:
        for case in ("leave", "kill"):
            times, closes = [], []
            for r in range(args.rebalance_rounds):
                group = f"bench-groups-rb-{os.getpid()}-{case}-{r}"
                for i in (0, 1):
                    cmd_qs[i].put(("join", group))
                for i in (0, 1):
                    inbox.take(lambda x, i=i: x.get("idx") == i and x.get("joined") == group, 120, members)
                wait_stable(masks, 2, nparts, hold, 60.0, check)
                # at a random phase of the heartbeats: the wait above ends a whole number of heartbeat
                # intervals after the last change, which would put every leave at the same point of
                # the survivor's heartbeat cycle
                time.sleep(random.uniform(0, hb_ms / 1000.0))
                stamps[1] = 0.0
                armed[1] = 1
                if case == "leave":
                    cmd_qs[0].put("close")
                    res = inbox.take(lambda x: x.get("idx") == 0 and "t_close" in x, 60, members)
                    t_start = res["t_close"]
                    closes.append((res["t_closed"] - res["t_close"]) * 1000)
                else:
                    t_start = time.monotonic()
                    os.kill(members[0].pid, signal.SIGKILL)
                limit = args.session_timeout_ms / 1000.0 + 30
                while stamps[1] == 0.0:
                    if time.monotonic() - t_start > limit:
                        raise RuntimeError(f"rebalance ({case}): the survivor did not get all {nparts} partitions "
                                           f"in {limit:.0f} s")
                    if members[1].exitcode is not None:
                        raise RuntimeError(f"{members[1].name} exited with {members[1].exitcode}")
                    time.sleep(0.002)
                ms = (stamps[1] - t_start) * 1000
                times.append(ms)
                _say(args, f"rebalance {case} round {r + 1}/{args.rebalance_rounds}: {ms:,.0f} ms")
                cmd_qs[1].put("close")
                inbox.take(lambda x: x.get("idx") == 1 and "t_close" in x, 60, members)
                if case == "kill":
                    members[0].join(10)
                    spawn(0)
            s = _stats_ms(times)
            if case == "leave":
                s["target_ms"] = 1000.0
                s["close_call_median_ms"] = float(np.median(closes))
                s["what"] = "from the start of one member's close() until the other's on_assign holds all partitions"
            else:
                s["target_ms"] = args.session_timeout_ms + 1000.0
                s["what"] = ("from SIGKILL of one member process until the survivor's on_assign holds all "
                             "partitions (session expiry + the survivor's next heartbeat)")
            s["met"] = s["median_ms"] <= s["target_ms"]
            out[case] = s
        out["ok"] = True
    finally:
        _stop_workers([p for p in members if p is not None], [q for q in cmd_qs if q is not None])
    return out


# -- commits ------------------------------------------------------------------------------------


def commits(args, url, topic, nparts) -> dict:
    from hpbroker.bench import _groups_workers as W
    from hpbroker.client import Admin

    produce_topic = f"{topic}-acks"
    with Admin(url) as adm:
        adm.create_topic(produce_topic, 1, if_not_exists=True)
    mp = multiprocessing.get_context("spawn")
    result_q = mp.Queue()
    cfg = {"fetch_max_bytes": 1 << 20, "session_timeout_ms": args.session_timeout_ms, "size": args.size,
           "group": f"bench-groups-commit-{os.getpid()}", "seconds": args.commit_seconds,
           "rounds": args.commit_rounds}
    p = mp.Process(target=W.commit_main, args=(url, topic, produce_topic, nparts, cfg, result_q),
                   name="bench-committer", daemon=True)
    _say(args, f"commit latency: 4 cases x {args.commit_seconds:g} s, interleaved in {args.commit_rounds} rounds")
    p.start()
    try:
        res = Inbox(result_q).take(lambda r: r.get("kind") == "commit", 4 * args.commit_seconds + 120, [p])
    finally:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join(5)
    cases = res["cases"]
    base = cases["produce_call"]
    for k in ("commit_1", "commit_12"):
        c = cases[k]
        if base.get("p50_ms") and c.get("p50_ms"):
            c["p50_over_produce_call"] = c["p50_ms"] / base["p50_ms"]
            c["p99_over_produce_call"] = c["p99_ms"] / base["p99_ms"]
    return {"seconds_per_case": args.commit_seconds, "rounds": args.commit_rounds, "cases": cases,
            "what": "one member's synchronous commit() of changed offsets, beside single-record acks=all produce "
                    "latency in the same process, interleaved; both wait for the same durable group commit"}


# -- output -------------------------------------------------------------------------------------


def _f(v, fmt="{:,.0f}", none="-"):
    return none if v is None else fmt.format(v)


def _cpu_text(cpu: dict) -> str:
    return ", ".join(f"{n} {v:.0f}%" for n, v in cpu.items() if v is not None)


def print_table(r: dict) -> None:
    rows = [("broker", f"{r['broker']}; groups.heartbeat_interval_ms {r['heartbeat_interval_ms']}; "
                       f"{r['cpus']} CPUs on this machine"),
            ("topic", f"{r['partitions']} partitions, {_f(r.get('messages'))} x {r['size']} B "
                      f"(filled in {_f(r.get('fill_seconds'), '{:.1f}')} s)")]
    tp = r.get("throughput")
    if tp:
        rows.append(("throughput", f"median of {tp['rounds']} interleaved group/no-group pairs; auto-commit every "
                                   f"{tp['auto_commit_interval_ms']} ms in the group runs"))
        for api, lst in tp["by_api"].items():
            label = "poll_batches" if api == "batches" else f"poll(max_records={tp['max_records']})"
            for s in lst:
                rows.append((f"  {label}, {s['members']} reader(s): group / no group",
                             f"{s['group_msgs_per_s'] / 1e6:.2f} / {s['nogroup_msgs_per_s'] / 1e6:.2f} M msgs/s, "
                             f"group/no-group {s['ratio']:.2f} (pairs {', '.join(f'{x:.2f}' for x in s['ratios'])}); "
                             f"{tp['messages'][api]:,} msgs in {s['group_seconds']:.2f} s; "
                             f"auto-commits/run {_f(s['auto_commits_per_run'], '{:.0f}')}; "
                             f"group settled in {s['settle_seconds']:.2f} s"))
                gc, nc = s["group_cpu_s_per_m_msgs"], s["nogroup_cpu_s_per_m_msgs"]
                rows.append(("      CPU s per M msgs, readers / broker",
                             f"group {gc['readers']:.3f} / {gc['broker']:.3f}, no group {nc['readers']:.3f} / "
                             f"{nc['broker']:.3f}"))
                rows.append(("      CPU% group", _cpu_text(s["group_cpu_percent"])))
                rows.append(("      CPU% no group", _cpu_text(s["nogroup_cpu_percent"])))
    rb = r.get("rebalance")
    if rb:
        for case, label in (("leave", "rebalance after close()"), ("kill", "rebalance after kill -9")):
            s = rb[case]
            extra = (f"; close() itself {s['close_call_median_ms']:.0f} ms" if case == "leave"
                     else f"; session_timeout_ms {rb['session_timeout_ms']}")
            rows.append((f"{label} median / p90 / max ms",
                         f"{s['median_ms']:,.0f} / {s['p90_ms']:,.0f} / {s['max_ms']:,.0f}  ({rb['rounds']} rounds; "
                         f"target <= {s['target_ms']:,.0f}: {'met' if s['met'] else 'NOT met'}{extra})"))
    cm = r.get("commit")
    if cm:
        labels = {"commit_1": "commit() 1 partition", "commit_12": "commit() 12 partitions",
                  "produce_call": "baseline produce acks=all, Transport.call",
                  "produce_send": "baseline produce acks=all, Producer.send().get()"}
        for k, label in labels.items():
            c = cm["cases"][k]
            ratio = (f"  (p50 {c['p50_over_produce_call']:.2f}x, p99 {c['p99_over_produce_call']:.2f}x the "
                     f"Transport.call produce)" if "p50_over_produce_call" in c else "")
            rows.append((f"{label} p50 / p99 / max ms", f"{_f(c['p50_ms'], '{:.2f}')} / {_f(c['p99_ms'], '{:.2f}')} / "
                                                        f"{_f(c['max_ms'], '{:.1f}')}, {_f(c['per_s'])}/s{ratio}"))
    w = max(len(a) for a, _ in rows)
    for a, v in rows:
        print(f"{a:<{w}}  {v}")
    if not r.get("ok"):
        print(f"NOT OK: broker exit {r.get('broker_exit_code')}, shm left {r.get('shm_left_behind')}; "
              "see the JSON (--json) for the runs")
