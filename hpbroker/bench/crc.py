"""``hpbroker-bench crc``: what checking every fetched batch costs (issue 26).

A private broker gets ``--messages`` records of ``--size`` bytes in batches
of ``--batch`` records.  Then, ``--rounds`` times in alternating order, a
fresh consumer re-reads the topic from offset 0 to its end in each mode:

* ``batches-check`` / ``batches-nocheck``: ``Consumer.poll_batches`` (the
  consumer benchmark's fast path, hpbroker-bench e2e ``--consumers``) with
  ``check_crcs`` True (the default) / False;
* ``poll-check`` / ``poll-nocheck``: ``Consumer.poll``, one Message per
  record, with and without the check.

Per mode: the median time over the rounds, msgs/s, the consumer's CPU
seconds and the acceptor's.  The ratio that counts is check/nocheck of the
same API, per round, median.

Then, in this process, the cost the broker's fetch path would pay for the
same check (``--broker-side``): every byte of the partition read with
:class:`~hpbroker.io.PartitionReader` in replies of ``max_fetch_bytes``,
with and without :func:`hpbroker.client.integrity.check_reply` on each
reply, alternated, so the fraction of the acceptor's read work is measured
on the same bytes in the same minute (docs/reliability.md, "Who checks a
stored batch").
"""

from __future__ import annotations

import json
import statistics
import sys
import time

MODES = ("batches-check", "batches-nocheck", "poll-check", "poll-nocheck")
TOPIC = "crcbench"


def register(sub) -> None:
    p = sub.add_parser("crc", help="consumer check_crcs on against off (poll and poll_batches), and the broker-side cost")
    p.add_argument("--messages", type=int, default=2_000_000, help="records in the topic (default 2,000,000)")
    p.add_argument("--size", type=int, default=100, help="value bytes per record (default 100)")
    p.add_argument("--batch", type=int, default=1000, help="records per produced batch (default 1000)")
    p.add_argument("--rounds", type=int, default=5, help="reads per mode, in alternating order; medians (default 5)")
    p.add_argument("--fetch-max-bytes", type=int, default=8 << 20, help="the consumers' fetch_max_bytes (default 8 MiB)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: all four)")
    p.add_argument("--dir", default=None, help="where the temp data dir goes (default: the cwd's filesystem)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def produce(url: str, n: int, size: int, per_batch: int) -> int:
    from hpbroker.client import Producer

    value = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    with Producer(url, acks=1, linger_ms=5) as p:
        for start in range(0, n, per_batch):
            p.send_batch(TOPIC, [value] * min(per_batch, n - start), partition=0)
        p.flush(600)
    return n


def read_all(url: str, mode: str, end: int, fetch_max_bytes: int) -> dict:
    from hpbroker.client import Consumer

    c = Consumer(url, TOPIC, partitions=[0], auto_offset_reset="earliest", fetch_max_wait_ms=100,
                 fetch_max_bytes=fetch_max_bytes, check_crcs=mode.endswith("-check"))
    got = 0
    try:
        own0 = time.process_time()
        t0 = time.perf_counter()
        if mode.startswith("batches"):
            while c.position(0) < end:
                for rb in c.poll_batches(timeout_ms=100):
                    got += rb.record_count - (rb.start_offset - rb.base_offset)
        else:
            while c.position(0) < end:
                got += len(c.poll(timeout_ms=100, max_records=100_000))
        return {"seconds": time.perf_counter() - t0, "consumer_cpu_s": time.process_time() - own0, "records": got}
    finally:
        c.close()


def broker_side(data_dir: str, end: int, reply_bytes: int, rounds: int) -> dict:
    """PartitionReader reads of the whole partition, each reply checked or not, alternated."""
    import os

    from hpbroker.client.integrity import check_reply
    from hpbroker.io import PartitionReader

    d = os.path.join(data_dir, f"{TOPIC}-0")
    times = {"read": [], "read+check": []}
    nbytes = 0
    with PartitionReader(d) as r:
        for i in range(rounds * 2):
            check = (i % 2 == 1) ^ (i // 2 % 2 == 1)
            off, total = 0, 0
            t0 = time.perf_counter()
            while off < end:
                data = r.read(off, reply_bytes, end)
                if check:
                    _, off, problem = check_reply(data, off)
                    if problem:
                        raise RuntimeError(problem)
                else:
                    off = _next(data)
                total += len(data)
            times["read+check" if check else "read"].append(time.perf_counter() - t0)
            nbytes = total
    read = statistics.median(times["read"])
    both = statistics.median(times["read+check"])
    return {"bytes": nbytes, "read_s": read, "read_check_s": both, "read_GBps": nbytes / read / 1e9,
            "read_check_GBps": nbytes / both / 1e9, "check_fraction_of_read": (both - read) / read}


def _next(data) -> int:
    from hpbroker import batch as B

    last = None
    for _, h in B.iter_batches(data):
        last = h
    return last.base_offset + last.record_count


def run(args) -> int:
    import psutil  # noqa: F401 (the acceptor's CPU)

    from hpbroker.bench._e2e_broker import LocalBroker

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    broker = LocalBroker(args.dir, ["--partitions", "1"]).start()
    try:
        t0 = time.perf_counter()
        end = produce(broker.url, args.messages, args.size, args.batch)
        produce_s = time.perf_counter() - t0
        acceptor = broker.processes().get("acceptor0")
        runs: dict[str, list] = {m: [] for m in modes}
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for mode in order:
                cpu0 = acceptor.cpu_times() if acceptor else None
                res = read_all(broker.url, mode, end, args.fetch_max_bytes)
                if cpu0 is not None:
                    cpu1 = acceptor.cpu_times()
                    res["acceptor_cpu_s"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
                if res["records"] != end:
                    raise RuntimeError(f"{mode}: read {res['records']} records, {end} expected")
                runs[mode].append(res)
                if not args.json:
                    print(f"round {r + 1} {mode:16s} {res['seconds']:7.3f} s  {end / res['seconds'] / 1e6:6.2f} M msgs/s  "
                          f"consumer CPU {res['consumer_cpu_s']:.2f} s", flush=True)
        out = {"messages": end, "size": args.size, "batch": args.batch, "rounds": args.rounds,
               "produce_s": produce_s, "modes": {}, "ratios": {}}
        for mode, rs in runs.items():
            sec = statistics.median(x["seconds"] for x in rs)
            out["modes"][mode] = {
                "seconds": sec, "seconds_range": [min(x["seconds"] for x in rs), max(x["seconds"] for x in rs)],
                "msgs_per_s": end / sec,
                "consumer_cpu_s": statistics.median(x["consumer_cpu_s"] for x in rs),
                "acceptor_cpu_s": statistics.median(x.get("acceptor_cpu_s", 0.0) for x in rs),
            }
        for api in ("batches", "poll"):
            on, off = runs.get(f"{api}-check"), runs.get(f"{api}-nocheck")
            if on and off:
                per_round = [a["seconds"] / b["seconds"] for a, b in zip(on, off)]
                out["ratios"][api] = {"time_check_over_nocheck_median": statistics.median(per_round),
                                      "range": [min(per_round), max(per_round)]}
        out["broker_side"] = broker_side(broker.data_dir, end, 8 << 20, max(3, args.rounds))
        if args.json:
            print(json.dumps(out))
        else:
            print(f"\n{end:,} records of {args.size} B in batches of {args.batch}, median of {args.rounds}:")
            print(f"{'mode':17s} {'time s':>8s} {'range':>15s} {'msgs/s':>12s} {'consumer CPU s':>15s} {'acceptor CPU s':>15s}")
            for mode, v in out["modes"].items():
                print(f"{mode:17s} {v['seconds']:8.3f} {v['seconds_range'][0]:7.3f}-{v['seconds_range'][1]:<7.3f} "
                      f"{v['msgs_per_s']:12,.0f} {v['consumer_cpu_s']:15.2f} {v['acceptor_cpu_s']:15.2f}")
            for api, v in out["ratios"].items():
                print(f"{api}: check/nocheck time, per-round median {v['time_check_over_nocheck_median']:.3f} "
                      f"(range {v['range'][0]:.3f}-{v['range'][1]:.3f})")
            b = out["broker_side"]
            print(f"broker side, {b['bytes'] / 1e6:.0f} MB in 8 MiB replies: read {b['read_GBps']:.2f} GB/s, "
                  f"read+check {b['read_check_GBps']:.2f} GB/s: the check adds {100 * b['check_fraction_of_read']:.1f} % "
                  "to the acceptor's read work")
        return 0
    finally:
        broker.stop()
        left = broker.cleanup()
        if left:
            print(f"warning: the broker left {left} in /dev/shm (unlinked)", file=sys.stderr)
