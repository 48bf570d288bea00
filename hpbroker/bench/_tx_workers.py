"""Worker processes of ``hpbroker-bench --transactional`` (:mod:`._tx_bench`).

Each worker is its own process (multiprocessing ``spawn``) with its own
Producer.  It builds its values before the clock starts, runs two
warm-up rounds of its mode, reports ready, waits for ``go``, then for
``duration`` seconds runs one unit after another, each of ``n`` messages
to the next partition (round robin from its own start):

* ``tx``: ``with p.transaction() as tx: tx.send_batch(topic, values,
  partition=q)`` - a local transaction, committed on exit.  Timed: the
  whole transaction (begin to the commit's reply), the begin alone and
  the commit alone (the messages are sent between them: a share of more
  than ``transaction_flush_bytes`` goes in a TxProduce of its own there).
* ``plain``: ``p.send_batch(topic, values, partition=q).result()`` with
  ``acks=all``, ``linger_ms=0`` and a ``batch_size`` that holds all ``n``
  messages: the same messages in one produce request, one at a time.
  Timed: from the call to the ack.

So both modes keep one request (or transaction) in flight per worker;
``--tx-concurrency`` workers at once is what lets the broker's group
commit batch them.  A worker's result: units and messages done, its
seconds, errors, and its latency samples (seconds).
"""

from __future__ import annotations

import time
import traceback

import numpy as np

from hpbroker import batch as B


def _values(size: int, n: int, idx: int) -> list[bytes]:
    base = bytes((65 + (i + idx) % 26) for i in range(64)) * (size // 64 + 1)
    return [base[i % 64:i % 64 + size] for i in range(n)]


def worker_main(idx, url, topic, nparts, cfg, counters, go, ready_q, result_q) -> None:
    from hpbroker.procutil import name_process, tune_runtime

    name_process(f"hpbroker-bench: tx worker{idx}", f"hpb-bench-t{idx}")
    tune_runtime(32 << 20, 200)
    try:
        res = _run(idx, url, topic, nparts, cfg, counters, go, ready_q)
        res["idx"] = idx
        result_q.put(res)
    except BaseException as e:  # report, never hang the parent
        ready_q.put(("error", idx, repr(e)))
        result_q.put({"idx": idx, "error": f"{e!r}\n{traceback.format_exc()}"})


def _run(idx, url, topic, nparts, cfg, counters, go, ready_q) -> dict:
    from hpbroker.client import Producer
    from hpbroker.procutil import freeze_heap

    n, size, mode = cfg["n"], cfg["size"], cfg["mode"]
    values = _values(size, n, idx)
    batch_size = max(256 << 10, B.HEADER_SIZE + n * (size + B.ENTRY_SIZE) + 4096)
    extra = {"transaction_flush_bytes": cfg["flush_bytes"]} if cfg.get("flush_bytes") else {}
    p = Producer(url, acks="all", linger_ms=0, batch_size=batch_size, max_in_flight=1, request_timeout_ms=120_000,
                 **extra)
    perf = time.perf_counter
    lat = np.zeros(1 << 20, dtype=np.float64)
    commit_lat = np.zeros_like(lat) if mode == "tx" else None
    begin_lat = np.zeros_like(lat) if mode == "tx" else None
    q = idx % nparts

    def unit(i: int) -> None:
        nonlocal q
        t0 = perf()
        if mode == "tx":
            tx = p.transaction()
            tb = perf()
            tx.send_batch(topic, values, partition=q)
            t1 = perf()
            tx.commit()
            t2 = perf()
            if i >= 0:
                begin_lat[i] = tb - t0
                commit_lat[i] = t2 - t1
        else:
            p.send_batch(topic, values, partition=q).result()
            t2 = perf()
        if i >= 0:
            lat[i] = t2 - t0
        q = (q + 1) % nparts

    try:
        p.partitions_for(topic)
        for _ in range(2):
            unit(-1)
        freeze_heap()
        ready_q.put(("ready", idx, None))
        go.wait()
        t0 = perf()
        end = t0 + cfg["duration"]
        i = errors = 0
        first_error = None
        while perf() < end and i < len(lat):
            try:
                unit(i)
            except Exception as e:  # noqa: BLE001 - counted, reported
                errors += 1
                first_error = first_error or repr(e)
                if errors > 10:
                    break
                continue
            i += 1
            counters[idx] = i * n
        secs = perf() - t0
    finally:
        p.close(10)
    return {"units": i, "messages": i * n, "seconds": secs, "errors": errors, "first_error": first_error,
            "lat_s": lat[:i], "commit_lat_s": None if commit_lat is None else commit_lat[:i],
            "begin_lat_s": None if begin_lat is None else begin_lat[:i]}
