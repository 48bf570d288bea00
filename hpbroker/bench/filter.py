"""``hpbroker-bench filter``: a selective server-side filter against consuming
everything and filtering in the client, in the same run (issue 25).

A private broker gets ``--messages`` records of ``--size`` bytes, a fraction
``--selectivity`` of them (1 % by default, spread evenly with a seeded
jitter) tagged ``tag=rare`` and keyed ``rare-<n>``, the others ``tag=common``
and ``k-<n>``.  Then, ``--rounds`` times and in alternating order, a fresh
consumer reads the topic from the start to its end in each mode:

* ``server``: ``Consumer(filter=...)`` and ``poll``: the broker sends only
  the matches;
* ``server-batches``: the same with ``poll_batches`` (no Message objects);
* ``client-poll``: ``Consumer.poll`` of everything, the filter a Python
  test on each message (what an application does without server filters);
* ``client-batches``: ``Consumer.poll_batches`` of everything, filtered in
  the client with the same vectorised code the broker runs
  (``Filter.mask``): the fastest client-side filtering there is here.

Per mode: payload bytes received (``Fetcher.fetched_bytes``: the record
bytes on the wire), the time to reach the end, log records covered per
second, matches delivered, the acceptor's CPU seconds (psutil) and the
consumer process's (``time.process_time``) over the read.  Every mode must deliver exactly the same matching records.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time

from hpbroker import batch as B


def register(sub) -> None:
    p = sub.add_parser("filter", help="a 1 %-selective server-side filter vs consuming everything and filtering in the client")
    p.add_argument("--messages", type=int, default=2_000_000, help="records in the topic (default 2,000,000)")
    p.add_argument("--size", type=int, default=100, help="value bytes per record (default 100)")
    p.add_argument("--selectivity", type=float, default=0.01, help="fraction of records the filter matches (default 0.01)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of the topic (default 1)")
    p.add_argument("--on", choices=("header", "key"), default="header",
                   help="filter on the tag header (default) or on a key prefix")
    p.add_argument("--rounds", type=int, default=3, help="reads per mode, in alternating order; medians (default 3)")
    p.add_argument("--fetch-max-bytes", type=int, default=1 << 20, help="the consumers' fetch_max_bytes (default 1 MiB)")
    p.add_argument("--modes", default="server,server-batches,client-poll,client-batches",
                   help="comma-separated modes to run (default: all four)")
    p.add_argument("--dir", default=None, help="where the temp data dir goes (default: the cwd's filesystem)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


TOPIC = "filterbench"


def _filter(on: str):
    from hpbroker.protocol.filters import Filter

    return Filter.header_eq("tag", "rare") if on == "header" else Filter.key_prefix("rare-")


def produce(url: str, n: int, size: int, selectivity: float, partitions: int) -> dict:
    """Write the topic; return {partition: end offset} and the matching count."""
    from hpbroker.client import Producer

    rnd = random.Random(25)
    every = max(1, round(1 / selectivity)) if selectivity > 0 else n + 1
    rare_h, common_h = [("tag", b"rare")], [("tag", b"common")]
    value = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    chunk = 10_000
    matches = 0
    with Producer(url, acks=1, linger_ms=5) as p:
        for start in range(0, n, chunk):
            count = min(chunk, n - start)
            hit = {start + k * every + rnd.randrange(every) for k in range((count + every - 1) // every)}
            hit = {i for i in hit if start <= i < start + count}
            matches += len(hit)
            rows = range(start, start + count)
            keys = [b"rare-%d" % i if i in hit else b"k-%d" % i for i in rows]
            headers = [rare_h if i in hit else common_h for i in rows]
            p.send_batch(TOPIC, [value] * count, partition=(start // chunk) % partitions, keys=keys, headers=headers)
        p.flush(600)
    return {"matches": matches}


def read_all(url: str, mode: str, flt, partitions: int, ends: dict, fetch_max_bytes: int) -> dict:
    """One fresh consumer from the start to ``ends``; what it received and how fast."""
    from hpbroker.client import Consumer

    kw = dict(partitions=range(partitions), auto_offset_reset="earliest", fetch_max_wait_ms=100,
              fetch_max_bytes=fetch_max_bytes)
    if mode.startswith("server"):
        kw["filter"] = flt
    c = Consumer(url, TOPIC, **kw)
    got = 0
    on_header = "header" in flt.spec
    try:
        t0 = time.perf_counter()
        while any(c.position(p) < ends[p] for p in range(partitions)):
            if mode == "server-batches":
                for rb in c.poll_batches(timeout_ms=100):
                    got += rb.record_count
            elif mode == "client-batches":
                for rb in c.poll_batches(timeout_ms=100):
                    data = rb.data
                    for pos, h in B.iter_batches(data):
                        keep = flt.mask(data, pos, h)
                        skip = rb.start_offset - h.base_offset
                        if skip > 0:
                            keep[:skip] = False
                        got += int(keep.sum())
            else:
                msgs = c.poll(timeout_ms=100, max_records=100_000)
                if mode == "server":
                    got += len(msgs)
                elif on_header:
                    for m in msgs:
                        if m.headers and any(n == "tag" and v == b"rare" for n, v in m.headers):
                            got += 1
                else:
                    for m in msgs:
                        if m.key is not None and m.key.startswith(b"rare-"):
                            got += 1
        dt = time.perf_counter() - t0
        return {"seconds": dt, "matches": got, "wire_bytes": c._f.fetched_bytes}
    finally:
        c.close()


def run(args) -> int:
    import psutil

    from hpbroker.bench._e2e_broker import LocalBroker

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    flt = _filter(args.on)
    broker = LocalBroker(args.dir, ["--partitions", str(args.partitions)]).start()
    try:
        t0 = time.perf_counter()
        made = produce(broker.url, args.messages, args.size, args.selectivity, args.partitions)
        produce_s = time.perf_counter() - t0
        from hpbroker.client import Consumer

        with Consumer(broker.url, TOPIC, partitions=range(args.partitions)) as c:
            ends = {p: o for p, o in c.end_offsets().items()}
        total = sum(ends.values())
        acceptor = broker.processes().get("acceptor0")
        runs: dict[str, list] = {m: [] for m in modes}
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for mode in order:
                cpu0 = acceptor.cpu_times() if acceptor else None
                own0 = time.process_time()
                res = read_all(broker.url, mode, flt, args.partitions, ends, args.fetch_max_bytes)
                res["consumer_cpu_s"] = time.process_time() - own0
                if cpu0 is not None:
                    cpu1 = acceptor.cpu_times()
                    res["acceptor_cpu_s"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
                if res["matches"] != made["matches"]:
                    raise RuntimeError(f"{mode}: {res['matches']} matches, {made['matches']} expected")
                runs[mode].append(res)
                if not args.json:
                    print(f"round {r + 1} {mode:15s} {res['seconds']:7.3f} s  {res['wire_bytes'] / 1e6:9.1f} MB  "
                          f"{total / res['seconds'] / 1e6:6.2f} M log msgs/s", flush=True)
        out = {
            "messages": args.messages, "size": args.size, "selectivity": args.selectivity, "on": args.on,
            "partitions": args.partitions, "rounds": args.rounds, "matches": made["matches"],
            "log_records": total, "produce_s": produce_s, "filter": flt.spec, "modes": {},
        }
        for mode, rs in runs.items():
            sec = statistics.median(x["seconds"] for x in rs)
            out["modes"][mode] = {
                "seconds": sec,
                "seconds_range": [min(x["seconds"] for x in rs), max(x["seconds"] for x in rs)],
                "log_msgs_per_s": total / sec,
                "matches_per_s": made["matches"] / sec,
                "wire_bytes": statistics.median(x["wire_bytes"] for x in rs),
                "acceptor_cpu_s": statistics.median(x.get("acceptor_cpu_s", 0.0) for x in rs),
                "consumer_cpu_s": statistics.median(x["consumer_cpu_s"] for x in rs),
            }
        for client, server in (("client-poll", "server"), ("client-batches", "server-batches")):
            if client in out["modes"] and server in out["modes"]:
                v, s = out["modes"][client], out["modes"][server]
                v["server_speedup"] = v["seconds"] / s["seconds"]
                v["server_wire_fraction"] = s["wire_bytes"] / v["wire_bytes"] if v["wire_bytes"] else None
                v["server_mode"] = server
        if args.json:
            print(json.dumps(out, default=str))
        else:
            print(f"\n{total:,} records of {args.size} B, {made['matches']:,} matching ({args.on} filter "
                  f"{json.dumps(flt.spec, default=str)}), {args.partitions} partition(s), median of {args.rounds}:")
            print(f"{'mode':16s} {'time s':>8s} {'range':>15s} {'log msgs/s':>12s} {'matches/s':>11s} "
                  f"{'wire MB':>9s} {'acceptor CPU s':>15s} {'consumer CPU s':>15s}")
            for mode, v in out["modes"].items():
                print(f"{mode:16s} {v['seconds']:8.3f} {v['seconds_range'][0]:7.3f}-{v['seconds_range'][1]:<7.3f} "
                      f"{v['log_msgs_per_s']:12,.0f} {v['matches_per_s']:11,.0f} {v['wire_bytes'] / 1e6:9.2f} "
                      f"{v['acceptor_cpu_s']:15.2f} {v['consumer_cpu_s']:15.2f}")
            for mode, v in out["modes"].items():
                if "server_speedup" in v:
                    print(f"{v['server_mode']} vs {mode}: {v['server_speedup']:.2f}x the speed, "
                          f"{100 * (v['server_wire_fraction'] or 0):.2f} % of the bytes")
        return 0
    finally:
        broker.stop()
        left = broker.cleanup()
        if left:
            print(f"warning: the broker left {left} in /dev/shm (unlinked)", file=sys.stderr)
