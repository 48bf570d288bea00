"""``hpbroker-bench ring``: shared-memory ring vs. pyzmq ipc:// PUSH/PULL, same run, same records.

Measures, each over ``--runs`` runs (medians reported, every run kept in
the JSON ``runs`` lists):

* ``gb_per_s``: 64 KiB records, one producer process -> one consumer
  process, the consumer drains zero-copy views; ``gb_per_s_copy_out``:
  the same with the consumer copying every record out.
* ``records_per_s``: 128 B records, producer batch-publishes
  (``write_many``, ``--batch`` records per call), consumer ``drain``s;
  ``records_per_s_unbatched``: one ``write`` per record.
* ``p50_us``/``p99_us``: one-way hand-off latency of one 128 B record with
  the blocking (spin, then semaphore) wait: half a ping-pong round trip.
* ``zmq_*``: the same records through pyzmq PUSH/PULL over ``ipc://`` in
  a temporary directory (``copy=False`` for 64 KiB, ``copy=True`` for 128 B).

Reproduce: ``hpbroker-bench ring --json`` (docs/ring.md, "Performance").
"""

from __future__ import annotations

import json
import statistics
import sys

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("ring", help="shared-memory ring vs pyzmq ipc PUSH/PULL: throughput and latency")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--runs", type=int, default=3, help="runs of each measurement (medians reported)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every record count by this")
    p.add_argument("--capacity", type=int, default=8 << 20, help="ring capacity in bytes (power of two)")
    p.add_argument("--batch", type=int, default=1024, help="records per write_many call for 128 B records")
    p.add_argument("--spin-us", type=float, default=50, help="spin before blocking, latency test")
    p.set_defaults(func=run)


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, desc="ring bench", unit="step", leave=False)


def measure(runs: int = 3, scale: float = 1.0, capacity: int = 8 << 20, batch: int = 1024, spin_us: float = 50, progress=None) -> dict:
    from hpbroker.bench import _ring_workers as W

    big, small = 64 << 10, 128
    n_big = max(1, int(40_000 * scale))
    n_big_z = max(1, int(15_000 * scale))
    n_small = max(1, int(2_000_000 * scale))
    n_small_u = max(1, int(300_000 * scale))
    n_small_z = max(1, int(400_000 * scale))
    n_lat = max(1, int(20_000 * scale))
    r = {k: [] for k in (
        "gb_per_s", "gb_per_s_copy_out", "zmq_gb_per_s", "records_per_s", "records_per_s_unbatched",
        "zmq_records_per_s", "p50_us", "p99_us", "zmq_p50_us", "zmq_p99_us",
    )}

    def step():
        if progress is not None:
            progress.update(1)

    for _ in range(runs):
        r["gb_per_s"].append(n_big * big / W.ring_throughput(big, n_big, capacity) / 1e9)
        step()
        r["gb_per_s_copy_out"].append(n_big * big / W.ring_throughput(big, n_big, capacity, copy_out=True) / 1e9)
        step()
        r["zmq_gb_per_s"].append(n_big_z * big / W.zmq_throughput(big, n_big_z) / 1e9)
        step()
        r["records_per_s"].append(n_small / W.ring_throughput(small, n_small, capacity, batch=batch))
        step()
        r["records_per_s_unbatched"].append(n_small_u / W.ring_throughput(small, n_small_u, capacity))
        step()
        r["zmq_records_per_s"].append(n_small_z / W.zmq_throughput(small, n_small_z))
        step()
        lat = W.ring_latency(small, n_lat, spin_us=spin_us)
        r["p50_us"].append(float(np.percentile(lat, 50)))
        r["p99_us"].append(float(np.percentile(lat, 99)))
        step()
        lat = W.zmq_latency(small, n_lat)
        r["zmq_p50_us"].append(float(np.percentile(lat, 50)))
        r["zmq_p99_us"].append(float(np.percentile(lat, 99)))
        step()
    out = {k: statistics.median(v) for k, v in r.items()}
    out["ratio_gb_per_s"] = out["gb_per_s"] / out["zmq_gb_per_s"]
    out["ratio_gb_per_s_copy_out"] = out["gb_per_s_copy_out"] / out["zmq_gb_per_s"]
    out["ratio_records_per_s"] = out["records_per_s"] / out["zmq_records_per_s"]
    out["ratio_records_per_s_unbatched"] = out["records_per_s_unbatched"] / out["zmq_records_per_s"]
    out["ratio_p50"] = out["zmq_p50_us"] / out["p50_us"]
    out["params"] = {
        "runs": runs, "capacity": capacity, "batch": batch, "spin_us": spin_us, "big_bytes": big,
        "small_bytes": small, "counts": {"big": n_big, "big_zmq": n_big_z, "small": n_small,
        "small_unbatched": n_small_u, "small_zmq": n_small_z, "latency": n_lat},
    }
    out["runs"] = r
    return out


STEPS_PER_RUN = 8


def run(args) -> int:
    with _progress(args.runs * STEPS_PER_RUN) as bar:
        res = measure(args.runs, args.scale, args.capacity, args.batch, args.spin_us, bar)
    if args.json:
        print(json.dumps(res))
        return 0
    rows = [
        ("64 KiB records, GB/s (zero-copy view)", res["gb_per_s"], res["zmq_gb_per_s"], res["ratio_gb_per_s"]),
        ("64 KiB records, GB/s (reader copies out)", res["gb_per_s_copy_out"], res["zmq_gb_per_s"], res["ratio_gb_per_s_copy_out"]),
        ("128 B records/s (write_many + drain)", res["records_per_s"], res["zmq_records_per_s"], res["ratio_records_per_s"]),
        ("128 B records/s (write per record)", res["records_per_s_unbatched"], res["zmq_records_per_s"], res["ratio_records_per_s_unbatched"]),
        ("128 B one-way latency p50, us", res["p50_us"], res["zmq_p50_us"], res["zmq_p50_us"] / res["p50_us"]),
        ("128 B one-way latency p99, us", res["p99_us"], res["zmq_p99_us"], res["zmq_p99_us"] / res["p99_us"]),
    ]
    print(f"{'measurement (median of ' + str(args.runs) + ' runs)':46} {'ring':>14} {'pyzmq ipc':>14} {'ring/zmq':>9}")
    for name, a, b, ratio in rows:
        print(f"{name:46} {a:14,.2f} {b:14,.2f} {ratio:8.2f}x")
    print("(latency ratio is zmq/ring: higher is better for the ring)")
    return 0
