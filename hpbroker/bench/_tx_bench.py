"""``hpbroker-bench --transactional``: local transactions beside plain
produce of the same messages, in one run (docs/performance.md,
"Transactions").

For each ``--tx-messages N`` (default 1, 100 and 10 000; ``--size`` bytes
each, default 100) two phases run on one private broker, each with
``--tx-concurrency`` worker processes (default 4) for ``--tx-seconds``
(default 5):

* ``tx``: each worker commits local transactions of N messages to one
  partition, one after another (begin, the messages, commit);
* ``plain``: each worker sends the same N messages as one produce request
  (acks=all, one batch) and waits for its ack, one after another.

A round runs both phases for every N, the order of tx and plain swapped
every round; ``--tx-rounds`` (default 3) rounds.  Per N the report gives
the median msgs/s of each mode, the median of the rounds' tx/plain ratios,
the commit latency (from the commit call to its reply), the begin's and
the whole transaction's latency, p50 and p99 over every transaction of every round,
beside the plain request's ack latency, and the broker's CPU per million
messages (and the workers' own).  At the end the topic must hold exactly the messages the
workers were told were committed or acknowledged (warm-ups included).

    hpbroker-bench --transactional [--tx-messages N ...] [--tx-concurrency C]
                   [--tx-seconds S] [--tx-rounds R] [--size B] [--partitions P] [--json]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys

import numpy as np

DEFAULT_SIZES = (1, 100, 10_000)


def add_arguments(p) -> None:
    g = p.add_argument_group("transactions (--transactional)")
    g.add_argument("--transactional", action="store_true",
                   help="local transactions of --tx-messages messages beside plain produce of the same messages "
                        "per request, same run (docs/performance.md, Transactions)")
    g.add_argument("--tx-messages", type=int, action="append", metavar="N",
                   help="messages per transaction (repeatable; default 1, 100 and 10000)")
    g.add_argument("--tx-concurrency", type=int, default=4, metavar="C",
                   help="worker processes, each with one transaction (or request) at a time (default 4)")
    g.add_argument("--tx-seconds", type=float, default=5.0, metavar="S", help="seconds per phase (default 5)")
    g.add_argument("--tx-flush-bytes", type=int, metavar="B",
                   help="the Producer's transaction_flush_bytes (default: its default, 1 MiB)")
    g.add_argument("--tx-rounds", type=int, default=3, metavar="R",
                   help="rounds of every phase, tx and plain order swapped each round (default 3)")


def run(args) -> int:
    from hpbroker.bench import _e2e_broker as EB
    from hpbroker.bench.e2e import _serve_args
    from hpbroker.client import Admin

    sizes = args.tx_messages or list(DEFAULT_SIZES)
    if min(sizes) < 1 or args.tx_concurrency < 1 or args.tx_rounds < 1 or args.tx_seconds <= 0 or args.size < 1:
        raise ValueError("--tx-messages, --tx-concurrency, --tx-rounds and --size must be >= 1, --tx-seconds > 0")
    if args.broker or args.replica or args.consumers:
        raise ValueError("--transactional starts its own standalone broker; no --broker, --replica or --consumers")
    broker = EB.LocalBroker(args.dir, _serve_args(args)).start()
    out: dict = {}
    try:
        url = broker.url
        topic = f"bench-tx-{os.getpid()}"
        with Admin(url) as adm:
            nparts = adm.create_topic(topic, args.partitions, if_not_exists=True)
        procs = broker.processes()
        phases: dict[tuple[int, str], list[dict]] = {}
        total = 0
        for r in range(args.tx_rounds):
            for n in sizes:
                for mode in (("tx", "plain") if r % 2 == 0 else ("plain", "tx")):
                    res = _phase(url, topic, nparts, mode, n, args, procs)
                    phases.setdefault((n, mode), []).append(res)
                    total += res["messages"] + res["warmup_messages"]
                    if not args.no_progress:
                        print(f"round {r + 1}/{args.tx_rounds}, {n:>6} msgs/{'tx' if mode == 'tx' else 'request'}, "
                              f"{mode:<5}: {res['msgs_per_s']:>10,.0f} msgs/s  p50 {res['p50_ms']:.1f} ms  "
                              f"errors {res['errors']}", file=sys.stderr, flush=True)
        with Admin(url) as adm:
            in_log = sum(adm.list_offsets(topic, p, -1) for p in range(nparts))
        out = _summary(args, sizes, phases, nparts)
        out.update({"messages_expected": total, "messages_in_log": in_log})
        out["ok"] = bool(out["ok"] and in_log == total)
    finally:
        rc = broker.stop()
        left = broker.cleanup()
        if out:
            out["broker_exit_code"], out["shm_left_behind"] = rc, left
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print(out)
    return 0 if out.get("ok") else 1


def _phase(url, topic, nparts, mode, n, args, procs) -> dict:
    from hpbroker.bench import _e2e_broker as EB
    from hpbroker.bench import _tx_workers as W

    mp = multiprocessing.get_context("spawn")
    C = args.tx_concurrency
    counters = mp.RawArray("q", C)
    go = mp.Event()
    ready_q, result_q = mp.Queue(), mp.Queue()
    cfg = {"mode": mode, "n": n, "size": args.size, "duration": args.tx_seconds, "flush_bytes": args.tx_flush_bytes}
    workers = [mp.Process(target=W.worker_main, args=(i, url, topic, nparts, cfg, counters, go, ready_q, result_q),
                          name=f"bench-tx{i}", daemon=True) for i in range(C)]
    for w in workers:
        w.start()
    results = []
    try:
        for _ in workers:
            kind, idx, err = ready_q.get(timeout=300)
            if kind == "error":
                raise RuntimeError(f"tx bench worker {idx} failed to start: {err}")
        import psutil

        sampler = EB.CpuSampler(procs)
        wsampler = EB.CpuSampler({w.name: psutil.Process(w.pid) for w in workers})
        sampler.start()
        wsampler.start()
        go.set()
        while len(results) < C:
            results.append(result_q.get(timeout=args.tx_seconds + 300))
            if results[-1].get("error"):
                raise RuntimeError(f"tx bench worker {results[-1]['idx']}: {results[-1]['error']}")
        sampler.stop()
        wsampler.stop()
    finally:
        go.set()
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
                w.join(5)
    msgs = sum(r["messages"] for r in results)
    secs = max(r["seconds"] for r in results)
    lat = np.concatenate([r["lat_s"] for r in results])
    commit = np.concatenate([r["commit_lat_s"] for r in results]) if mode == "tx" else None
    begin = np.concatenate([r["begin_lat_s"] for r in results]) if mode == "tx" else None
    cpu = sum(sampler.cpu_percent().values())  # the broker's processes, in % of one core
    wcpu = sum(wsampler.cpu_percent().values())  # the workers'
    return {"mode": mode, "n": n, "messages": msgs, "units": sum(r["units"] for r in results), "seconds": secs,
            "warmup_messages": 2 * n * C, "msgs_per_s": msgs / secs, "errors": sum(r["errors"] for r in results),
            "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
            "p50_ms": float(np.percentile(lat, 50) * 1000) if len(lat) else 0.0,
            "broker_cpu_s_per_m_msgs": cpu / 100 * secs / (msgs / 1e6) if msgs else None,
            "client_cpu_s_per_m_msgs": wcpu / 100 * secs / (msgs / 1e6) if msgs else None,
            "_lat": lat, "_commit": commit, "_begin": begin}


def _pct(a, q):
    return None if a is None or not len(a) else float(np.percentile(a, q) * 1000)


def _summary(args, sizes, phases, nparts) -> dict:
    rows, ok = [], True
    for n in sizes:
        tx, plain = phases[(n, "tx")], phases[(n, "plain")]
        ok = ok and all(r["errors"] == 0 and r["messages"] > 0 for r in tx + plain)
        ratios = [t["msgs_per_s"] / p["msgs_per_s"] for t, p in zip(tx, plain) if p["msgs_per_s"]]
        lat_tx = np.concatenate([r["_lat"] for r in tx])
        lat_commit = np.concatenate([r["_commit"] for r in tx])
        lat_begin = np.concatenate([r["_begin"] for r in tx])
        lat_plain = np.concatenate([r["_lat"] for r in plain])
        rows.append({
            "messages_per_tx": n,
            "tx_msgs_per_s": statistics.median(r["msgs_per_s"] for r in tx),
            "plain_msgs_per_s": statistics.median(r["msgs_per_s"] for r in plain),
            "tx_per_s": statistics.median(r["units"] / r["seconds"] for r in tx),
            "ratio": statistics.median(ratios) if ratios else None,
            "ratios": ratios,
            "commit_p50_ms": _pct(lat_commit, 50), "commit_p99_ms": _pct(lat_commit, 99),
            "tx_p50_ms": _pct(lat_tx, 50), "tx_p99_ms": _pct(lat_tx, 99),
            "begin_p50_ms": _pct(lat_begin, 50), "begin_p99_ms": _pct(lat_begin, 99),
            "plain_p50_ms": _pct(lat_plain, 50), "plain_p99_ms": _pct(lat_plain, 99),
            "tx_broker_cpu_s_per_m_msgs": statistics.median(r["broker_cpu_s_per_m_msgs"] for r in tx),
            "plain_broker_cpu_s_per_m_msgs": statistics.median(r["broker_cpu_s_per_m_msgs"] for r in plain),
            "tx_client_cpu_s_per_m_msgs": statistics.median(r["client_cpu_s_per_m_msgs"] for r in tx),
            "plain_client_cpu_s_per_m_msgs": statistics.median(r["client_cpu_s_per_m_msgs"] for r in plain),
            "rounds_tx_msgs_per_s": [r["msgs_per_s"] for r in tx],
            "rounds_plain_msgs_per_s": [r["msgs_per_s"] for r in plain],
        })
    return {"what": "local transactions of N messages (begin, send_batch to one partition, commit) beside plain "
                    "produce of the same N messages as one acks=all request, each worker one at a time",
            "size": args.size, "concurrency": args.tx_concurrency, "seconds_per_phase": args.tx_seconds,
            "rounds": args.tx_rounds, "partitions": nparts, "flush_mode": args.flush_mode or "durable",
            "transaction_flush_bytes": args.tx_flush_bytes or "Producer default (1 MiB)",
            "results": rows, "ok": ok}


def _f(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def _print(out: dict) -> None:
    print(f"local transactions vs plain produce, same run: {out['size']} B messages, {out['concurrency']} workers "
          f"(one transaction or request each at a time), {out['rounds']} rounds of {out['seconds_per_phase']:g} s "
          f"per phase, {out['partitions']} partitions, flush {out['flush_mode']}")
    print(f"{'msgs/tx':>8} {'tx msgs/s':>11} {'plain msgs/s':>13} {'ratio':>6} {'tx/s':>8} "
          f"{'commit p50/p99 ms':>18} {'tx p50/p99 ms':>15} {'plain p50/p99 ms':>17} {'begin p50':>9} "
          f"{'CPU s/M tx':>11} {'plain':>7}")
    for r in out["results"]:
        print(f"{r['messages_per_tx']:>8,} {_f(r['tx_msgs_per_s']):>11} {_f(r['plain_msgs_per_s']):>13} "
              f"{_f(r['ratio'], '{:.2f}'):>6} {_f(r['tx_per_s']):>8} "
              f"{_f(r['commit_p50_ms'], '{:.1f}') + ' / ' + _f(r['commit_p99_ms'], '{:.1f}'):>18} "
              f"{_f(r['tx_p50_ms'], '{:.1f}') + ' / ' + _f(r['tx_p99_ms'], '{:.1f}'):>15} "
              f"{_f(r['plain_p50_ms'], '{:.1f}') + ' / ' + _f(r['plain_p99_ms'], '{:.1f}'):>17} "
              f"{_f(r['begin_p50_ms'], '{:.2f}'):>9} {_f(r['tx_broker_cpu_s_per_m_msgs'], '{:.1f}'):>11} "
              f"{_f(r['plain_broker_cpu_s_per_m_msgs'], '{:.1f}'):>7}")
    print(f"messages in the log {out['messages_in_log']:,}, expected {out['messages_expected']:,}; "
          f"{'ok' if out['ok'] else 'NOT OK'}")
