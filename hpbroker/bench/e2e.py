"""``hpbroker-bench`` (no subcommand, or ``hpbroker-bench e2e``): the whole
broker, end to end, with same-run baselines.

What is measured: producer PROCESSES (``--producers``, default 1) send
``--size``-byte messages (default 100) in batches of ``--batch-bytes``
(default 256 KiB) to a broker with ``--acks`` (default 1: acked after the
durable group commit; the broker's default flush mode is ``durable``).
Values are built before the clock starts and reused; ack latency is
measured per batch, from the send call to its ack.  ``--consumers N``
processes read the same topic live with ``Consumer.poll_batches`` and
measure produce-to-consume latency from a send-time stamp in each batch's
first value, then (catch-up) read it all again from offset 0.

The broker is private unless ``--broker URL``: ``python -m hpbroker serve``
in its own session on a free loopback port, data in a temp dir under
``--dir`` (default: the cwd), stopped by pid, temp dir removed.  CPU% of
each broker process (supervisor, acceptors, writers) is taken from their
CPU times over the produce phase (psutil), with the peak RSS.

Baselines (``--baseline disk|redis|fsync|all``, repeatable), same run,
same message count and size: ``disk`` is a plain sequential O_DIRECT write
of the bytes the broker wrote (``hpbroker.bench.log.disk_baseline``);
``redis`` is Redis Streams XADD with appendonly yes + appendfsync always,
through redis-benchmark (C, pipelined) and redis-py (pipelined); ``fsync``
is the device's latency floor: a loop of one-batch O_DIRECT appends, each
followed by fdatasync, in the broker's temp dir, with p50/p99/p999 of the
write+fdatasync time (``_e2e_fsync``), printed beside the ack latency.

``--replica sync|async`` runs the same workload twice in one invocation:
first against a private standalone broker (the baseline, reported under
``baselines.standalone``), then against a private master with a slave in
that replication mode (the top-level figures), ``--acks all`` unless
``--acks`` is given.  The replicated run starts once the master reports the
slave in sync; at the end of its produce phase the master's lag counters
are read and the slave's catch-up (its LATEST offsets equal to the
master's on every partition) is timed (``_e2e_replica``).

``--pairs N`` (with ``--replica``) measures N such pairs, the order
alternating (standalone first, then the replica first, ...) so that a
machine that slows down or speeds up during the invocation favours neither
side; each pair gives a ratio, ``replica_vs_standalone`` is their median
(``statistics.median_low``, so it is one pair's measured ratio) and the
top-level and ``baselines.standalone`` figures are that pair's.  Every
pair is listed under ``pairs``.

``--curve`` runs the same workload on a broker without CURVE and on one
with ``[security] curve = true`` (its keys and ACL made in its temp dir,
every bench client authenticating with its own key), ``--pairs`` pairs
alternating which goes first; the CURVE run's figures are the top-level
ones, the plain run's are ``baselines.plain``, and ``curve_vs_plain`` the
median pair's throughput ratio (``_e2e_curve``).

``--rate P%`` (for example ``50%``) runs the workload unpaced first, on its
own private broker (or on ``--broker``), and then offers P % of the peak it
measured: latency at a chosen fraction of the peak, in one invocation. The
peak run is reported under ``baselines.peak``.

    hpbroker-bench [--messages N | --duration S] [--size B] [--producers P]
                   [--consumers C] [--rate R|P%] [--baseline disk|redis|fsync|all]
                   [--replica sync|async [--pairs N]] [--curve [--pairs N]] [--json] [--plot FILE.png] [--broker URL]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np

DEFAULT_MESSAGES = 5_000_000


def register(sub) -> None:
    p = sub.add_parser("e2e", help="end to end: producer process(es) -> broker -> disk (-> consumers), "
                                   "with same-run disk and Redis Streams baselines (the default suite)")
    add_arguments(p)
    p.set_defaults(func=run)


#: the device is shared and noisy (one run: 1.5-2.1 GB/s): the disk baseline is a median of this many
DISK_BASELINE_RUNS = 3


def add_arguments(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--messages", type=int, help=f"messages in all (default {DEFAULT_MESSAGES:,})")
    g.add_argument("--duration", type=float, metavar="S", help="produce for S seconds instead of a count")
    p.add_argument("--size", type=int, default=100, help="message value bytes (default 100)")
    p.add_argument("--producers", type=int, default=1, help="producer processes (default 1)")
    p.add_argument("--consumers", type=int, default=0, help="consumer processes reading live via poll_batches (default 0)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the bench topic (default 4)")
    p.add_argument("--acks", choices=["0", "1", "all"], default=None,
                   help="default 1 (after the durable commit); all with --replica")
    p.add_argument("--flush-mode", choices=["durable", "async"], default=None,
                   help="passed to serve (the broker's default is durable)")
    p.add_argument("--acceptors", type=int, help="passed to serve")
    p.add_argument("--writers", type=int, help="passed to serve")
    p.add_argument("--broker", metavar="URL", help="use this running broker instead of starting one")
    p.add_argument("--rate", metavar="R|P%",
                   help="offered load over all producers (paced batches): R messages/s, or P%% of the peak, which "
                        "is then measured first in the same invocation (the same workload unpaced, on its own "
                        "private broker) and reported as baselines.peak")
    p.add_argument("--warmup", type=float, default=0.0, metavar="S",
                   help="producers first send for S seconds as they will when measured (same batches and pacing), "
                        "uncounted: the figures then describe the steady state, without connection set-up and first "
                        "page faults (default 0)")
    p.add_argument("--batch-bytes", type=int, default=256 << 10, help="producer batch size in bytes (default 256 KiB)")
    p.add_argument("--linger-ms", type=float, default=2.0, help="Producer linger_ms (default 2)")
    p.add_argument("--in-flight", type=int, default=16, help="unacknowledged requests per acceptor and producer (default 16)")
    p.add_argument("--idempotent", action="store_true",
                   help="Producer(enable_idempotence=True): producer id and sequence numbers on every batch "
                        "(compare with a run without it)")
    p.add_argument("--client", choices=["producer", "raw"], default="producer",
                   help="producer: Producer.send_batch (default); raw: Produce requests on bare DEALER sockets")
    p.add_argument("--fetch-max-bytes", type=int, default=8 << 20, help="consumer fetch_max_bytes (default 8 MiB)")
    p.add_argument("--no-replay", action="store_true", help="consumers skip the catch-up re-read from offset 0")
    p.add_argument("--baseline", action="append", choices=["disk", "redis", "fsync", "all"], default=[],
                   help="same-run baseline (repeatable, or all)")
    p.add_argument("--fsync-iterations", type=int, default=2000,
                   help="--baseline fsync: at most this many write+fdatasync (default 2000; also stops after "
                        "the produce phase's duration, at least 5 s)")
    p.add_argument("--replica", choices=["sync", "async"],
                   help="run the workload on a standalone broker, then on a master + slave in this replication "
                        "mode (acks=all), and report the replicated figures relative to the standalone ones")
    p.add_argument("--pairs", type=int, default=1,
                   help="--replica or --curve: measure this many pairs (standalone/replicated, plain/CURVE), "
                        "alternating which goes first, and report the median pair's ratio (default 1)")
    p.add_argument("--curve", action="store_true",
                   help="run the workload on a broker without CURVE and on one with [security] curve = true "
                        "(keys and an ACL generated in its temp dir), and report CURVE relative to plain")
    p.add_argument("--redis-messages", type=int, help="messages for the Redis baselines (default: the same count)")
    p.add_argument("--dir", help="where the temp data dir goes (default: the cwd's filesystem)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="rate over time and latency histogram (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from hpbroker.bench import _tx_bench

    _tx_bench.add_arguments(p)


def _rate(text: str | None) -> float | str | None:
    """``--rate``: messages/s (float), or "P%" of the same run's peak (kept as text)."""
    if text is None:
        return None
    t = str(text).strip()
    pct = t.endswith("%")
    try:
        v = float(t[:-1] if pct else t)
    except ValueError:
        raise ValueError(f"--rate: expected messages/s or a percentage of the peak such as 50%, got {text!r}") from None
    if not v > 0 or (pct and v > 100):
        raise ValueError(f"--rate must be > 0 messages/s, or a percentage of the peak in (0%, 100%]; got {text!r}")
    return t if pct else v


def _pct(a, q) -> float | None:
    if a is None or len(a) == 0:
        return None
    return float(np.percentile(a, q) * 1000.0)


def cpu_per_m_msgs(r: dict) -> dict | None:
    """CPU %·s per million messages acknowledged (100 = one core for one
    second), for the broker's processes (a replicated run's slave included),
    the bench's own, and all: on a machine the run keeps busy, throughput is
    bounded by this, so it shows where a replicated run's ratio goes."""
    n = r["messages_acked"] / 1e6
    if not n:
        return None
    broker = sum(r["cpu_percent"].values()) * r["seconds"] / n
    bench = sum(r["bench_cpu_percent"].values()) * r["seconds"] / n
    return {"broker": broker, "bench": bench, "all": broker + bench}


def _progress(args, total):
    if args.no_progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="acked", unit="msg", unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.3)


def run(args) -> int:
    if args.transactional:
        from hpbroker.bench import _tx_bench

        return _tx_bench.run(args)
    if args.size < 1 or args.producers < 1 or args.partitions < 1 or args.consumers < 0:
        raise ValueError("--size, --producers and --partitions must be >= 1, --consumers >= 0")
    if args.replica and args.broker:
        raise ValueError("--replica starts its own standalone broker, master and slave; it cannot use --broker")
    if args.pairs < 1 or (args.pairs > 1 and not (args.replica or args.curve)):
        raise ValueError("--pairs must be >= 1, and more than one needs --replica or --curve")
    if args.curve and (args.replica or args.broker or args.rate):
        raise ValueError("--curve starts its own plain and CURVE brokers; not with --replica, --broker or --rate")
    if args.warmup < 0 or (args.warmup and args.client == "raw"):
        raise ValueError("--warmup must be >= 0 and needs --client producer")
    args.rate = _rate(args.rate)
    if args.messages is None and args.duration is None:
        args.messages = DEFAULT_MESSAGES
    if args.acks is None:
        args.acks = "all" if args.replica else "1"
    if args.idempotent and (args.client == "raw" or args.acks == "0"):
        raise ValueError("--idempotent needs --client producer and acks 1 or all")
    baselines = set(args.baseline)
    if "all" in baselines:
        baselines = {"disk", "redis", "fsync"}
    peak = None
    if isinstance(args.rate, str):
        if args.replica:
            raise ValueError("--rate P% measures the peak on a standalone broker; give --replica an absolute --rate")
        fraction = float(args.rate[:-1]) / 100.0
        args.rate = None
        peak = run_once(args, None, set())  # the same workload, unpaced: the peak it is a fraction of
        for k in ("_timeline", "_lat", "_e2e_lat"):
            peak.pop(k, None)
        if not peak.get("ok") or not peak.get("msgs_per_s"):
            raise RuntimeError(f"the peak run failed (errors {peak.get('errors')}: {peak.get('first_error')}); "
                               "no rate to offer")
        peak["fraction"] = fraction
        args.rate = peak["msgs_per_s"] * fraction
        if not args.no_progress:
            print(f"peak: {peak['msgs_per_s']:,.0f} msgs/s; now {fraction:.0%} of it, {args.rate:,.0f} msgs/s offered",
                  file=sys.stderr)
    standalone = plain = None
    if args.curve:
        from hpbroker.bench import _e2e_curve

        result, plain = _e2e_curve.run_pairs(args, baselines, run_once)
    elif args.replica:
        result, standalone = run_pairs(args, baselines)
    else:
        result = run_once(args, None, baselines)
    if peak is not None:
        result.setdefault("baselines", {})["peak"] = peak
        result["ok"] = bool(result.get("ok") and peak.get("ok"))
    if plain is not None:
        result.setdefault("baselines", {})["plain"] = plain
        result["ok"] = bool(result.get("ok") and plain.get("ok"))
    if standalone is not None:
        result.setdefault("baselines", {})["standalone"] = standalone
        result["ok"] = bool(result.get("ok") and standalone.get("ok"))
    _ratios(result)
    if args.plot:
        plot(result, args.plot)
    timeline = result.pop("_timeline", None)
    result.pop("_lat", None)
    result.pop("_e2e_lat", None)
    del timeline
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result.get("ok") else 1


def _drop_samples(r: dict) -> dict:
    for k in ("_timeline", "_lat", "_e2e_lat"):
        r.pop(k, None)
    return r


def run_pairs(args, baselines: set) -> tuple[dict, dict]:
    """``--pairs`` standalone/replicated pairs, alternating which runs first;
    -> (the replicated run, the standalone run) of the median pair, with
    every pair listed under ``pairs`` and the ``baselines`` (run once, with
    the first replicated run) attached."""
    pairs, extra = [], None
    for i in range(args.pairs):
        runs = {}
        for replica in ((None, args.replica) if i % 2 == 0 else (args.replica, None)):
            runs[replica] = r = run_once(args, replica, baselines if replica and extra is None else set())
            if replica and extra is None:
                extra = r.get("baselines") or {}
            if not args.no_progress and replica is None:
                print(f"pair {i + 1}/{args.pairs}: standalone baseline {r['msgs_per_s']:,.0f} msgs/s", file=sys.stderr)
        rep, sa = runs[args.replica], runs[None]
        ratio = (rep.get("msgs_per_s") or 0.0) / sa["msgs_per_s"] if sa.get("msgs_per_s") else 0.0
        pairs.append((ratio, i, rep, sa))
        if not args.no_progress:
            print(f"pair {i + 1}/{args.pairs}: {args.replica} replica {rep['msgs_per_s']:,.0f} msgs/s, "
                  f"ratio {ratio:.3f}", file=sys.stderr)
    chosen = statistics.median_low([(ratio, i) for ratio, i, _, _ in pairs])[1]
    listed = []
    for ratio, i, rep, sa in pairs:
        listed.append({"first": "standalone" if i % 2 == 0 else "replica", "ratio": ratio,
                       "replica_msgs_per_s": rep["msgs_per_s"], "standalone_msgs_per_s": sa["msgs_per_s"],
                       "replica_p99_ms": rep.get("p99_ms"), "standalone_p99_ms": sa.get("p99_ms"),
                       "ok": bool(rep.get("ok") and sa.get("ok"))})
        if i != chosen:
            _drop_samples(rep), _drop_samples(sa)
    _, _, result, standalone = pairs[chosen]
    result["baselines"] = dict(extra or {})
    result["ok"] = all(p["ok"] for p in listed)
    if args.pairs > 1:
        result["pairs"] = listed
        result["median_pair"] = chosen
    return result, _drop_samples(standalone)


def _serve_args(args) -> list[str]:
    serve = ["--partitions", str(args.partitions)]
    if args.flush_mode:
        serve += ["--flush-mode", args.flush_mode]
    if args.acceptors:
        serve += ["--acceptors", str(args.acceptors)]
    if args.writers:
        serve += ["--writers", str(args.writers)]
    return serve


def run_once(args, replica: str | None, baselines: set, curve: bool = False) -> dict:
    """One measured run: start the private broker (or master + slave when
    ``replica``; with CURVE when ``curve``), measure, run the ``baselines``
    on its filesystem, stop everything by pid and remove the temp dirs."""
    from hpbroker.bench import _e2e_broker as EB

    broker = pair = hooks = None
    result: dict = {}
    try:
        if args.broker:
            url = args.broker
            procs = EB.remote_processes(url)
        elif replica:
            from hpbroker.bench._e2e_replica import ReplicaPair

            pair = ReplicaPair(args.dir, _serve_args(args), replica).start()
            broker = pair.master
            url = broker.url
            procs = pair.processes()
            hooks = _ReplicaHooks(pair)
        else:
            broker = EB.LocalBroker(args.dir, _serve_args(args), curve=curve).start()
            url = broker.url
            procs = broker.processes()
        result = measure(args, url, procs, broker, hooks)
        if hooks is not None:
            result["replication"] = rep = hooks.report()
            rep["slave_pids"] = {n: p.pid for n, p in procs.items() if n.startswith("slave.")}
            result["ok"] = bool(result["ok"] and rep.get("caught_up")
                                and sum(rep["master_offsets"]) == result["messages_in_log"])
        root = broker.root if broker else (args.dir or os.getcwd())
        result["baselines"] = run_baselines(args, baselines, root, result)
    finally:
        if pair is not None:
            rcs = pair.stop()
            lefts = pair.cleanup()
            if result:
                result["broker_exit_code"] = rcs["master"]
                result["slave_exit_code"] = rcs["slave"]
                result["shm_left_behind"] = lefts["master"] + lefts["slave"]
            for who, left in lefts.items():
                if left:
                    print(f"hpbroker-bench: the {who} left {len(left)} shared-memory objects; unlinked: {left}",
                          file=sys.stderr)
        elif broker is not None:
            rc = broker.stop()
            left = broker.cleanup()
            if result:
                result["broker_exit_code"] = rc
                result["shm_left_behind"] = left
            if left:
                print(f"hpbroker-bench: the broker left {len(left)} shared-memory objects; unlinked: {left}",
                      file=sys.stderr)
    return result


class _ReplicaHooks:
    """What :func:`measure` does around the produce phase of a replicated run."""

    def __init__(self, pair):
        self.pair = pair
        self.out: dict = {"mode": pair.mode}

    def before_go(self, topic: str, nparts: int) -> None:
        self.out["insync_wait_seconds"] = self.pair.wait_insync()
        self.out["lag_before"] = self._lag()

    def after_produce(self, topic: str, nparts: int) -> None:
        self.out["lag_at_produce_end"] = self._lag()
        self.out.update(self.pair.wait_caught_up(topic, nparts))

    def _lag(self) -> dict:
        from hpbroker.bench._e2e_replica import lag_stats

        try:
            return lag_stats(self.pair.master.url)
        except Exception as e:  # noqa: BLE001 - report, do not lose the run
            return {"error": repr(e)}

    def report(self) -> dict:
        return self.out


def measure(args, url: str, procs: dict, broker, hooks=None) -> dict:
    from hpbroker.bench import _e2e_broker as EB
    from hpbroker.bench import _e2e_workers as W
    from hpbroker.client import Admin

    topic = f"bench-e2e-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    keys = getattr(broker, "client_kw", None) or {}  # a CURVE broker's client key (--curve)
    with Admin(url, **keys) as adm:
        nparts = adm.create_topic(topic, args.partitions, if_not_exists=True)
    per_batch = W.records_per_batch(args.size, args.batch_bytes)
    mp = multiprocessing.get_context("spawn")
    P, C = args.producers, args.consumers
    pcount = mp.RawArray("q", P)
    ccount = mp.RawArray("q", max(C, 1))
    ends = mp.RawArray("q", [-1] * nparts)
    go = mp.Event()
    ready_q, result_q = mp.Queue(), mp.Queue()
    workers = []
    for c in range(C):
        parts = list(range(c, nparts, C))
        if not parts:
            continue
        cfg = {"size": args.size, "fetch_max_bytes": args.fetch_max_bytes, "replay": not args.no_replay, "keys": keys}
        w = mp.Process(target=W.consumer_main, args=(c, url, topic, parts, cfg, ccount, ends, go, ready_q, result_q),
                       name=f"bench-consumer{c}", daemon=True)
        workers.append(w)
    for i in range(P):
        share = None
        if args.messages is not None:
            share = args.messages // P + (1 if i < args.messages % P else 0)
        cfg = {"client": args.client, "size": args.size, "per_batch": per_batch, "batch_bytes": args.batch_bytes,
               "linger_ms": args.linger_ms, "acks": args.acks if args.acks == "all" else int(args.acks),
               "in_flight": args.in_flight, "warmup": args.warmup, "messages": share, "duration": args.duration,
               "idempotent": args.idempotent, "keys": keys,
               "rate": args.rate / P if args.rate else None}
        w = mp.Process(target=W.producer_main, args=(i, url, topic, nparts, cfg, pcount, go, ready_q, result_q),
                       name=f"bench-producer{i}", daemon=True)
        workers.append(w)
    for w in workers:
        w.start()
    try:
        import psutil

        wprocs = {w.name: psutil.Process(w.pid) for w in workers}
        for _ in workers:
            kind, idx, err = ready_q.get(timeout=120)
            if kind == "error":
                raise RuntimeError(f"bench worker {idx} failed to start: {err}")
        if hooks is not None:
            hooks.before_go(topic, nparts)
        sampler = EB.CpuSampler({**procs, **wprocs})
        total = args.messages
        bar = _progress(args, total)
        timeline = []
        results = {"producer": [], "consumer": []}
        sampler.start()
        go.set()
        t0 = time.perf_counter()
        last = 0
        t_prod_done = None
        last_sample = t0
        while len(results["producer"]) < P or len(results["consumer"]) < len(workers) - P:
            try:
                r = result_q.get(timeout=0.2)
                results[r["kind"]].append(r)
                if r.get("error"):
                    raise RuntimeError(f"bench {r['kind']} {r['idx']} failed: {r['error']}")
                if r["kind"] == "producer" and len(results["producer"]) == P:
                    t_prod_done = time.perf_counter()
                    sampler.stop()
                    if hooks is not None:
                        hooks.after_produce(topic, nparts)
                    with Admin(url, **keys) as adm:
                        for p in range(nparts):
                            ends[p] = adm.list_offsets(topic, p, -1)
            except Exception as e:  # queue.Empty
                if type(e).__name__ != "Empty":
                    raise
            now = time.perf_counter()
            acked = sum(pcount)
            consumed = sum(ccount)
            if now - last_sample >= 0.2:
                timeline.append((now - t0, acked, consumed))
                if t_prod_done is None:
                    sampler.sample()
                last_sample = now
            if bar is not None:
                bar.update(acked - last)
                last = acked
                if len(timeline) >= 2:
                    (ta, a, _), (tb, b, _) = timeline[-2], timeline[-1]
                    post = {"rate": f"{(b - a) / max(tb - ta, 1e-9) / 1e6:.2f}M/s"}
                    if C:
                        post["consumed"] = f"{consumed / 1e6:.2f}M"
                    bar.set_postfix(post, refresh=False)
            for w in workers:
                if w.exitcode not in (None, 0):
                    raise RuntimeError(f"{w.name} exited with {w.exitcode}")
        if bar is not None:
            bar.close()
    finally:
        go.set()
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
                w.join(5)
    bytes_on_disk = broker.bytes_on_disk() if broker is not None else None
    prs = results["producer"]
    sent = sum(r["sent"] for r in prs)
    acked = sum(r["acked"] for r in prs)
    errors = sum(r["errors"] for r in prs)
    secs = max(r["seconds"] for r in prs)
    lats = [r["lat_s"] for r in prs if r["lat_s"] is not None]
    lat = np.concatenate(lats) if lats else None
    log_end = int(sum(ends))
    cpu = sampler.cpu_percent()
    out = {
        "what": "end to end: producer process(es) -> broker (acceptor -> ring -> writer -> fdatasync) -> ack; "
                "ack latency per batch from send to ack",
        "url": url if broker is None else "private broker",
        "broker": url if broker is None else "private (python -m hpbroker serve)" + (
            f", master + slave, replication mode {hooks.pair.mode}" if hooks is not None else ""),
        "client": args.client,
        "replica": hooks.pair.mode if hooks is not None else None,
        "curve": bool(keys),
        "messages": acked,
        "messages_sent": sent,
        "messages_acked": acked,
        "messages_in_log": log_end,
        "errors": errors,
        "first_error": next((r["first_error"] for r in prs if r["first_error"]), None),
        "size": args.size,
        "batch_bytes": args.batch_bytes,
        "records_per_batch": per_batch,
        "batches": sum(r["batches"] for r in prs),
        "producers": P,
        "partitions": nparts,
        "acks": args.acks,
        "idempotent": args.idempotent,
        "flush_mode": args.flush_mode or "durable (broker default)",
        "in_flight": args.in_flight,
        "warmup_s": args.warmup,
        "offered_rate": args.rate,
        "seconds": secs,
        "msgs_per_s": acked / secs,
        "mb_per_s": acked * args.size / secs / 1e6,
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "p999_ms": _pct(lat, 99.9),
        "max_ms": None if lat is None or not len(lat) else float(lat.max() * 1000),
        "bytes_on_disk": bytes_on_disk,
        "log_mb_per_s": None if bytes_on_disk is None else bytes_on_disk / secs / 1e6,
        "cpu_percent": {n: v for n, v in cpu.items() if not n.startswith("bench-")},
        "thread_cpu_percent": sampler.thread_percent(),
        "bench_cpu_percent": {n: v for n, v in cpu.items() if n.startswith("bench-")},
        "broker_pids": {n: p.pid for n, p in procs.items()},
        "topic": topic,
        "broker_peak_rss_mb": round(sum(v for n, v in sampler.peak_rss.items() if not n.startswith("bench-")) / 2**20, 1),
        "_timeline": timeline,
        "_lat": lat,
    }
    out["cpu_per_m_msgs"] = cpu_per_m_msgs(out)
    warm = sum(r.get("warmup_acked", 0) for r in prs)
    out["messages_warmup"] = warm
    if warm and bytes_on_disk and log_end:
        # the warm-up's bytes are on disk too: count the measured share only
        out["log_mb_per_s"] = bytes_on_disk * acked / log_end / secs / 1e6
    ok = errors == 0 and acked == sent and (args.acks == "0" or log_end == acked + warm)
    crs = results["consumer"]
    if C:
        consumed = sum(r["consumed"] for r in crs)
        csecs = max(r["seconds"] for r in crs)
        e2e = np.concatenate([r["e2e_lat_s"] for r in crs]) if crs else None
        out.update({
            "consumers": len(crs),
            "messages_consumed": consumed,
            "consume_msgs_per_s": consumed / csecs,
            "consume_seconds": csecs,
            "e2e_p50_ms": _pct(e2e, 50), "e2e_p99_ms": _pct(e2e, 99), "e2e_p999_ms": _pct(e2e, 99.9),
            "_e2e_lat": e2e,
        })
        if not args.no_replay:
            rep = sum(r.get("replayed", 0) for r in crs)
            rsecs = max(r.get("replay_seconds", 0) for r in crs)
            out.update({"messages_replayed": rep, "replay_msgs_per_s": rep / rsecs if rsecs else None,
                        "replay_mb_per_s": rep * args.size / rsecs / 1e6 if rsecs else None})
            ok = ok and rep == log_end
        ok = ok and consumed == log_end
    out["ok"] = bool(ok)
    return out


def run_baselines(args, which: set, root: str, res: dict) -> dict:
    out: dict = {}
    n = res["messages"]
    if "disk" in which:
        from hpbroker.bench.log import disk_baseline

        nbytes = res.get("bytes_on_disk") or n * (args.size + 16)
        if res.get("messages_warmup") and res.get("messages_in_log"):
            nbytes = nbytes * res["messages_acked"] // res["messages_in_log"]
        runs = [disk_baseline(root, nbytes) for _ in range(DISK_BASELINE_RUNS)]
        d = sorted(runs, key=lambda r: r["mb_per_s"])[len(runs) // 2]
        d["runs_mb_per_s"] = [r["mb_per_s"] for r in runs]
        d["what"] = (f"plain sequential O_DIRECT write of the bytes the broker wrote in the measured phase, 4 MiB chunks, "
                     f"one fdatasync; the median of {DISK_BASELINE_RUNS} runs")
        out["disk"] = d
    if "fsync" in which:
        from hpbroker.bench._e2e_fsync import fsync_baseline

        out["fsync"] = fsync_baseline(root, args.batch_bytes, args.fsync_iterations,
                                      max_seconds=max(res.get("seconds") or 0.0, 5.0))
    if "redis" in which:
        from hpbroker.bench import _redis_baseline as R

        why = R.available()
        if why:
            print(why, file=sys.stderr)
            out["redis"] = {"skipped": why}
        else:
            rn = args.redis_messages or n
            out["redis_benchmark"] = R.redis_benchmark(root, rn, args.size)
            out["redis_py"] = R.redis_py(root, rn, args.size)
            for k in ("redis_benchmark", "redis_py"):
                if out[k].get("skipped"):
                    print(f"{k} baseline skipped: {out[k]['skipped']}", file=sys.stderr)
    return out


def _ratios(res: dict) -> None:
    b = res.get("baselines") or {}
    if "disk" in b and res.get("log_mb_per_s"):
        b["disk"]["ratio"] = res["log_mb_per_s"] / b["disk"]["mb_per_s"]
    for k in ("redis_benchmark", "redis_py"):
        if k in b and b[k].get("msgs_per_s"):
            b[k]["ratio"] = res["msgs_per_s"] / b[k]["msgs_per_s"]
    if "fsync" in b and res.get("p99_ms") and b["fsync"].get("p99_ms"):
        # how many device write+fdatasync tails the broker's ack tail is
        b["fsync"]["ack_p99_over_fsync_p99"] = res["p99_ms"] / b["fsync"]["p99_ms"]
    pk = b.get("peak")
    if pk and pk.get("msgs_per_s"):
        pk["ratio"] = res["msgs_per_s"] / pk["msgs_per_s"]  # achieved, as a fraction of the peak
    pl = b.get("plain")
    if pl and pl.get("msgs_per_s"):
        pl["ratio"] = res["msgs_per_s"] / pl["msgs_per_s"]
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            if res.get(k) and pl.get(k):
                pl[k.replace("_ms", "_ratio")] = res[k] / pl[k]
    sa = b.get("standalone")
    if sa and sa.get("msgs_per_s"):
        sa["ratio"] = res["msgs_per_s"] / sa["msgs_per_s"]
        res["replica_vs_standalone"] = sa["ratio"]
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            if res.get(k) and sa.get(k):
                sa[k.replace("_ms", "_ratio")] = res[k] / sa[k]


def _f(v, fmt="{:,.0f}", none="-"):
    return none if v is None else fmt.format(v)


def print_table(r: dict) -> None:
    b = r.get("baselines") or {}
    sa = b.get("standalone")
    lat3 = ("p50_ms", "p99_ms", "p999_ms")
    rows = []
    if b.get("plain"):
        rows.append(("run", f"CURVE on every socket, acks={r['acks']}; baseline: the same broker without CURVE, "
                            "same workload, same invocation"))
    if sa:
        rows.append(("run", f"{r['replication']['mode']} replica (master + slave), acks={r['acks']}; "
                            f"baseline: standalone, same workload, same invocation"))
    rows += [
        ("messages acked", _f(r["messages_acked"]) + f" x {r['size']} B in {r['seconds']:.2f} s"),
        *([("warm-up before it (uncounted)", f"{r['warmup_s']:g} s, {r['messages_warmup']:,} messages")]
          if r.get("warmup_s") else []),
        ("messages/s", _f(r["msgs_per_s"])),
        ("MB/s (payload)", _f(r["mb_per_s"], "{:,.1f}")),
        ("ack latency p50 / p99 / p999 ms", " / ".join(_f(r[k], "{:.2f}") for k in lat3)),
    ]
    if "peak" in b:
        pk = b["peak"]
        rows.append(("offered rate", f"{r['offered_rate']:,.0f} msgs/s = {pk['fraction']:.0%} of the peak below; "
                                     f"achieved {pk.get('ratio', 0):.1%} of the peak"))
        rows.append(("baseline peak messages/s", f"{pk['msgs_per_s']:,.0f}  (same workload unpaced, same invocation)"))
        rows.append(("baseline peak ack p50 / p99 / p999 ms", " / ".join(_f(pk[k], "{:.2f}") for k in lat3)))
    if "fsync" in b:
        d = b["fsync"]
        rows.append((f"baseline device write+fdatasync p50 / p99 / p999 ms",
                     " / ".join(_f(d[k], "{:.2f}") for k in lat3)
                     + f"  ({d['iterations']} x {d['write_bytes'] >> 10} KiB{' O_DIRECT' if d['direct'] else ' buffered'})"))
    if sa:
        rows.append(("baseline standalone messages/s", f"{sa['msgs_per_s']:,.0f}  (replica / standalone = "
                                                       f"{sa.get('ratio', 0):.2f})"))
        rows.append(("baseline standalone ack p50 / p99 / p999 ms", " / ".join(_f(sa[k], "{:.2f}") for k in lat3)))
        if r.get("pairs"):
            ratios = [f"{p['ratio']:.2f}" for p in r["pairs"]]
            rows.append((f"{len(ratios)} pairs, replica / standalone", ", ".join(ratios) + f"; median {sa['ratio']:.2f} "
                         f"(pair {r['median_pair'] + 1}: the figures here are that pair's)"))
        rep = r["replication"]
        lag = rep.get("lag_at_produce_end") or {}
        rows.append(("slave in sync before the run", f"after {_f(rep.get('insync_wait_seconds'), '{:.2f}')} s"))
        rows.append(("slave lag at produce end", ", ".join(f"{k} {v}" for k, v in lag.items()) or "-"))
        rows.append(("slave catch-up after produce",
                     f"{rep['catch_up_seconds'] * 1000:.0f} ms" if rep.get("caught_up")
                     else f"NOT caught up (master {rep.get('master_offsets')}, slave {rep.get('slave_offsets')})"))
    pl = b.get("plain")
    if pl:
        rows.append(("baseline plain messages/s", f"{pl['msgs_per_s']:,.0f}  (CURVE / plain = {pl.get('ratio', 0):.3f})"))
        rows.append(("baseline plain ack p50 / p99 / p999 ms", " / ".join(_f(pl[k], "{:.2f}") for k in lat3)))
        if len(r.get("pairs") or ()) > 1:
            ratios = [f"{p['ratio']:.3f}" for p in r["pairs"]]
            rows.append((f"{len(ratios)} pairs, CURVE / plain", ", ".join(ratios) + f"; median {pl['ratio']:.3f} "
                         f"(pair {r['median_pair'] + 1}: the figures here are that pair's)"))
        for who, label in ((pl, "baseline plain "), (r, "")):
            for n, th in (who.get("thread_cpu_percent") or {}).items():
                if n != "supervisor" and th:
                    rows.append((f"{label}CPU% {n} by thread", ", ".join(f"{k} {v:.0f}%" for k, v in th.items())))
    cm = r.get("cpu_per_m_msgs")
    if cm:
        cs = (sa or pl or {}).get("cpu_per_m_msgs")
        rows.append(("CPU %·s per M msgs: broker / bench / all", " / ".join(f"{cm[k]:.1f}" for k in ("broker", "bench", "all"))
                     + (f"  ({'plain' if pl else 'standalone'} {' / '.join(f'{cs[k]:.1f}' for k in ('broker', 'bench', 'all'))})"
                        if cs else "")))
    for n, v in r["cpu_percent"].items():
        rows.append((f"CPU% {n} (pid {r['broker_pids'].get(n)})", _f(v, "{:.0f}%")))
    for n, v in r["bench_cpu_percent"].items():
        rows.append((f"CPU% {n}", _f(v, "{:.0f}%")))
    rows.append(("broker peak RSS", f"{r['broker_peak_rss_mb']:,.0f} MiB"))
    rows.append(("bytes on disk", _f(r["bytes_on_disk"]) + (f" ({r['log_mb_per_s']:,.0f} MB/s of log)" if r["log_mb_per_s"] else "")))
    if "consumers" in r:
        rows.append((f"consumed live ({r['consumers']} consumer(s))", _f(r["messages_consumed"]) + f", {r['consume_msgs_per_s']:,.0f} msgs/s"))
        rows.append(("produce->consume p50 / p99 / p999 ms", " / ".join(_f(r[k], "{:.2f}") for k in ("e2e_p50_ms", "e2e_p99_ms", "e2e_p999_ms"))))
        if r.get("replay_msgs_per_s"):
            rows.append(("catch-up re-read msgs/s", f"{r['replay_msgs_per_s']:,.0f} ({r['replay_mb_per_s']:,.0f} MB/s)"))
    if "disk" in b:
        d = b["disk"]
        rng = d.get("runs_mb_per_s") or [d["mb_per_s"]]
        rows.append(("baseline disk O_DIRECT MB/s", f"{d['mb_per_s']:,.0f} (median; {min(rng):,.0f}-{max(rng):,.0f})  "
                                                    f"(hpbroker log MB/s / disk = {d.get('ratio', 0):.2f})"))
    for k, label in (("redis_benchmark", "redis-benchmark XADD"), ("redis_py", "redis-py XADD")):
        if k in b:
            x = b[k]
            if x.get("msgs_per_s"):
                rows.append((f"baseline {label} msgs/s", f"{x['msgs_per_s']:,.0f}  (hpbroker / redis = {x['ratio']:.2f}x)"))
            else:
                rows.append((f"baseline {label}", x.get("skipped") or x.get("error", "?")))
    if b.get("redis", {}).get("skipped"):
        rows.append(("baseline redis", b["redis"]["skipped"]))
    w = max(len(a) for a, _ in rows)
    for a, v in rows:
        print(f"{a:<{w}}  {v}")
    if not r.get("ok"):
        print(f"NOT OK: sent {r['messages_sent']}, acked {r['messages_acked']}, in log {r['messages_in_log']}, "
              f"consumed {r.get('messages_consumed')}, errors {r['errors']} {r['first_error'] or ''}")


def plot(res: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install 'hpbroker[bench]')", file=sys.stderr)
        return
    tl = np.array(res.get("_timeline") or [(0, 0, 0)], dtype=np.float64)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if len(tl) >= 2:
        dt = np.diff(tl[:, 0])
        a1.plot(tl[1:, 0], np.diff(tl[:, 1]) / dt / 1e6, label="acked")
        if tl[:, 2].any():
            a1.plot(tl[1:, 0], np.diff(tl[:, 2]) / dt / 1e6, label="consumed")
    a1.set_xlabel("s")
    a1.set_ylabel("million messages/s")
    a1.set_title(f"{res['size']} B messages, acks={res['acks']}")
    a1.legend()
    lat = res.get("_lat")
    if lat is not None and len(lat):
        ms = lat * 1000
        bins = np.logspace(np.log10(max(ms.min(), 1e-3)), np.log10(ms.max() * 1.01), 60)
        a2.hist(ms, bins=bins, label="ack (per batch)", alpha=0.7)
        e2e = res.get("_e2e_lat")
        if e2e is not None and len(e2e):
            a2.hist(np.clip(e2e * 1000, bins[0], None), bins=bins, label="produce->consume", alpha=0.6)
        a2.set_xscale("log")
        for q, k in ((50, "p50_ms"), (99, "p99_ms")):
            if res.get(k):
                a2.axvline(res[k], color="k", ls="--", lw=0.8)
                a2.text(res[k], a2.get_ylim()[1] * 0.9, f"p{q}", fontsize=8)
        a2.legend()
    a2.set_xlabel("latency, ms")
    a2.set_ylabel("batches")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
