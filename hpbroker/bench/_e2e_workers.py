"""Producer and consumer processes of ``hpbroker-bench`` (e2e).

Each worker is its own process (multiprocessing ``spawn``).  It connects,
builds everything it will send before the clock starts, reports ready,
waits for ``go``, runs, and puts one result dict on the result queue.
Progress goes through a shared int64 array (one slot per worker), which
the parent reads for the progress bar and the rate timeline.

Every batch's first value starts with the producer's ``time.time_ns()`` at
send time (8 bytes, little-endian) when the message size allows it, so a
consumer can measure produce-to-consume latency with ns resolution; with
smaller messages the batch header's ``first_timestamp`` (ms) is used.

Producer modes (``--client``):

* ``producer``: ``hpbroker.Producer.send_batch`` of pre-built value lists
  (the client encodes each batch, one ``encode_batch`` call); ack latency
  per batch from the ``send_batch`` call to its callback.
* ``raw``: Produce requests straight on ZeroMQ DEALER sockets (the wire
  protocol, docs/protocol.md), pre-encoded batches copied, time-stamped
  and re-CRC'd per send; a window of ``in_flight`` requests per acceptor.
"""

from __future__ import annotations

import struct
import time
import traceback

import numpy as np

from hpbroker import batch as B

_TS = struct.Struct("<q")


def records_per_batch(size: int, batch_bytes: int) -> int:
    return max(1, (batch_bytes - B.HEADER_SIZE) // (size + B.ENTRY_SIZE))


def _value_pool(size: int, n: int, k: int = 8) -> list[list[bytes]]:
    """``k`` lists of ``n`` distinct ``size``-byte values, reused for every send."""
    pool = []
    for j in range(k):
        base = bytes((65 + (i + j) % 26) for i in range(64)) * (size // 64 + 1)
        pool.append([base[i % 64 : i % 64 + size] for i in range(n)])
    return pool


def _stamped(template: bytes, size: int) -> bytes:
    if size < 8:
        return template
    return _TS.pack(time.time_ns()) + template[8:]


def _sleep_until(due: float) -> None:
    """Pace on perf_counter: sleep in slices of at most 1 ms, spin the last 0.2 ms."""
    perf = time.perf_counter
    while (now := perf()) < due:
        time.sleep(min(due - now, 0.001) if due - now > 0.0002 else 0)


def _next_values(pool, i: int, size: int) -> list[bytes]:
    """The i-th batch's values, its first one stamped with the send time."""
    vals = pool[i % len(pool)]
    vals[0] = _stamped(vals[0], size)
    return vals


def producer_main(idx, url, topic, nparts, cfg, counters, go, ready_q, result_q) -> None:
    from hpbroker.procutil import name_process, tune_runtime

    name_process(f"hpbroker-bench: producer{idx}", f"hpb-bench-p{idx}")

    # As the broker does: batch-sized buffers come from the heap, not fresh
    # pages, and the Producer's I/O thread gets the GIL within 200 us of
    # asking while this thread encodes the next batch (docs/client.md).
    tune_runtime(32 << 20, 200)
    try:
        if cfg["client"] == "raw":
            res = _raw_producer(idx, url, topic, nparts, cfg, counters, go, ready_q)
        else:
            res = _client_producer(idx, url, topic, nparts, cfg, counters, go, ready_q)
        res["kind"] = "producer"
        res["idx"] = idx
        result_q.put(res)
    except BaseException as e:  # report, never hang the parent
        ready_q.put(("error", idx, repr(e)))
        result_q.put({"kind": "producer", "idx": idx, "error": f"{e!r}\n{traceback.format_exc()}"})


def _schedule(cfg):
    """(total messages or None, deadline seconds or None, per-batch interval or None)."""
    n = cfg["per_batch"]
    interval = n / cfg["rate"] if cfg.get("rate") else None
    return cfg.get("messages"), cfg.get("duration"), interval


def _client_producer(idx, url, topic, nparts, cfg, counters, go, ready_q) -> dict:
    from hpbroker.client import Producer
    from hpbroker.procutil import freeze_heap

    size, n = cfg["size"], cfg["per_batch"]
    pool = _value_pool(size, n)
    total, duration, interval = _schedule(cfg)
    max_batches = (total + n - 1) // n if total is not None else 1 << 20
    lat = np.zeros(max_batches, dtype=np.float64)
    sent_at = np.zeros_like(lat)
    state = {"acked": 0, "errors": 0, "first_error": None, "warmup_sent": 0, "warmup_acked": 0}
    from hpbroker.client.transport import Transport, client_curve

    keys = cfg.get("keys") or {}  # --curve: this client's key and the broker's
    t = Transport(url, curve=client_curve(**keys) if keys else None)
    t.metadata([topic], timeout_ms=10_000)
    nacc = max(1, len(t.acceptors))
    t.close()
    # Room for the requests in flight plus two more per acceptor: no deeper
    # queue inside the client, so the ack latency measured is the broker's.
    buffer_memory = (cfg["in_flight"] + 2) * nacc * (cfg["batch_bytes"] + (64 << 10))
    p = Producer(url, acks=cfg["acks"], linger_ms=cfg["linger_ms"], batch_size=cfg["batch_bytes"],
                 max_in_flight=cfg["in_flight"], buffer_memory=min(buffer_memory, 1 << 30),
                 request_timeout_ms=60_000, enable_idempotence=cfg.get("idempotent", False), **keys)
    try:
        p.partitions_for(topic)  # metadata before the clock starts
        freeze_heap()  # no 4-6 ms full collections of the startup heap while measuring
        ready_q.put(("ready", idx, None))
        go.wait()
        perf = time.perf_counter
        part = idx % nparts
        part = _warm_up(p, topic, nparts, part, pool, size, n, cfg.get("warmup") or 0.0, interval, state)
        t0 = perf()
        end_t = t0 + duration if duration else None
        sent = 0
        i = 0

        def make_cb(i, k):
            def cb(md, exc):
                lat[i] = perf() - sent_at[i]
                if exc is not None:
                    state["errors"] += 1
                    if state["first_error"] is None:
                        state["first_error"] = repr(exc)
                else:
                    state["acked"] += k
                    counters[idx] = state["acked"]
            return cb

        while i < len(lat):
            if total is not None:
                k = min(n, total - sent)
                if k <= 0:
                    break
            else:
                k = n
            if end_t is not None and perf() >= end_t:
                break
            if interval is not None:
                _sleep_until(t0 + i * interval)
            vals = _next_values(pool, i, size)
            sent_at[i] = perf()
            p.send_batch(topic, vals if k == n else vals[:k], partition=part, callback=make_cb(i, k))
            part = (part + 1) % nparts
            sent += k
            i += 1
        t_sent = perf()
        p.flush()
        t1 = perf()
    finally:
        p.close(10)
    counters[idx] = state["acked"]
    return {"sent": sent, "acked": state["acked"] if cfg["acks"] != 0 else sent, "batches": i,
            "warmup_sent": state["warmup_sent"], "warmup_acked": state["warmup_acked"] if cfg["acks"] != 0 else state["warmup_sent"],
            "errors": state["errors"], "first_error": state["first_error"], "seconds": t1 - t0,
            "send_seconds": t_sent - t0, "lat_s": lat[:i] if cfg["acks"] != 0 else None}


def _warm_up(p, topic, nparts, part, pool, size, n, seconds, interval, state) -> int:
    """Send as the measured phase will (same batches, same pacing) for
    ``seconds``, counting only into ``state["warmup_sent"/"warmup_acked"]``
    (errors count as errors), then go straight on: no flush, so the measured
    phase starts in steady state.  Returns the next partition."""
    if seconds <= 0:
        return part

    def cb(md, exc):
        if exc is not None:
            state["errors"] += 1
            if state["first_error"] is None:
                state["first_error"] = f"during warm-up: {exc!r}"
        else:
            state["warmup_acked"] += n

    perf = time.perf_counter
    t0 = perf()
    i = 0
    while perf() < t0 + seconds:
        if interval is not None:
            _sleep_until(t0 + i * interval)
        p.send_batch(topic, _next_values(pool, i, size), partition=part, callback=cb)
        state["warmup_sent"] += n
        part = (part + 1) % nparts
        i += 1
    return part


def _raw_producer(idx, url, topic, nparts, cfg, counters, go, ready_q) -> dict:
    import zmq
    from crc32c import crc32c

    from hpbroker.procutil import freeze_heap

    from hpbroker.client.transport import Transport, client_curve
    from hpbroker.protocol import codec
    from hpbroker.protocol.messages import Produce

    size, n = cfg["size"], cfg["per_batch"]
    acks = {"all": -1, "1": 1, "0": 0}[str(cfg["acks"])]
    total, duration, interval = _schedule(cfg)
    pool = _value_pool(size, n)
    templates = [bytes(B.encode_batch(v)) for v in pool]
    keys = cfg.get("keys") or {}
    curve = client_curve(**keys) if keys else None
    t = Transport(url, curve=curve)
    md = t.metadata([topic], timeout_ms=10_000)
    acceptors = list(t.acceptors)
    t.close()
    ctx = zmq.Context()
    socks = []
    for ep in acceptors:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.setsockopt(zmq.RCVHWM, 100_000)
        if curve is not None:
            curve.apply(s)
        s.connect(ep)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    max_batches = (total + n - 1) // n if total is not None else 1 << 20
    lat = np.zeros(max_batches, dtype=np.float64)
    sent_at = np.zeros_like(lat)
    inflight = [0] * len(socks)
    pending: dict[int, tuple[int, int, int]] = {}  # id -> (batch index, records, socket)
    acked = errors = 0
    first_error = None
    window = cfg["in_flight"]
    del md
    freeze_heap()
    ready_q.put(("ready", idx, None))
    go.wait()
    perf = time.perf_counter
    first_ts = B.FIRST_TS_AT
    value0 = B.HEADER_SIZE + n * B.ENTRY_SIZE

    def receive(timeout_ms):
        nonlocal acked, errors, first_error
        for s, _ev in poller.poll(timeout_ms):
            while True:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                rep, _ = codec.decode_reply(frames)
                got = pending.pop(rep.id, None)
                if got is None:
                    continue
                bi, k, si = got
                inflight[si] -= 1
                lat[bi] = perf() - sent_at[bi]
                if rep.code:
                    errors += 1
                    first_error = first_error or f"{rep.code}: {rep.message}"
                else:
                    acked += k
            counters[idx] = acked

    t0 = perf()
    end_t = t0 + duration if duration else None
    sent = i = 0
    part = idx % nparts
    rid = 0
    while i < len(lat):
        k = n if total is None else min(n, total - sent)
        if k <= 0 or (end_t is not None and perf() >= end_t):
            break
        si = part % len(socks)
        if acks != 0 and inflight[si] >= window:
            receive(100)
            continue
        if interval is not None:
            wait = t0 + i * interval - perf()
            if wait > 0:
                if acks != 0 and pending:
                    receive(max(0, int(wait * 1000)))
                else:
                    time.sleep(wait)
                continue
        if k == n:
            buf = bytearray(templates[i % len(templates)])
            if size >= 8:
                _TS.pack_into(buf, value0, time.time_ns())
            _TS.pack_into(buf, first_ts, B.now_ms())
            _TS.pack_into(buf, B.MAX_TS_AT, B.now_ms())
            struct.pack_into("<I", buf, B.CRC_AT, crc32c(memoryview(buf)[B.CRC_START:]))
        else:
            vals = list(pool[0][:k])
            vals[0] = _stamped(vals[0], size)
            buf = B.encode_batch(vals)
        rid += 1
        req = Produce(id=rid, topic=topic, partition=part, acks=acks, timeout_ms=60_000)
        sent_at[i] = perf()
        socks[si].send_multipart(codec.encode_request(req, [buf]), copy=False)
        if acks != 0:
            pending[rid] = (i, k, si)
            inflight[si] += 1
        else:
            acked += k
            counters[idx] = acked
        part = (part + 1) % nparts
        sent += k
        i += 1
        if acks != 0:
            receive(0)
    t_sent = perf()
    deadline = perf() + 120
    while pending and perf() < deadline:
        receive(100)
    t1 = perf()
    if pending:
        errors += len(pending)
        first_error = first_error or f"{len(pending)} requests unanswered after 120 s"
    for s in socks:
        s.close(linger=0 if acks != 0 else 5000)
    ctx.term()
    counters[idx] = acked
    return {"sent": sent, "acked": acked, "batches": i, "errors": errors, "first_error": first_error,
            "seconds": t1 - t0, "send_seconds": t_sent - t0, "lat_s": lat[:i] if acks != 0 else None}


def consumer_main(idx, url, topic, parts, cfg, counters, ends, go, ready_q, result_q) -> None:
    """Read ``parts`` live from offset 0 while the producers run, until every
    partition reaches ``ends[p]`` (set by the parent once the producers are
    done); then, with ``cfg['replay']``, read the same data again from the
    beginning as fast as possible (catch-up throughput)."""
    from hpbroker.procutil import name_process

    name_process(f"hpbroker-bench: consumer{idx}", f"hpb-bench-c{idx}")
    try:
        res = _consume(idx, url, topic, parts, cfg, counters, ends, go, ready_q)
        res.update(kind="consumer", idx=idx)
        result_q.put(res)
    except BaseException as e:
        ready_q.put(("error", idx, repr(e)))
        result_q.put({"kind": "consumer", "idx": idx, "error": f"{e!r}\n{traceback.format_exc()}"})


def _consume(idx, url, topic, parts, cfg, counters, ends, go, ready_q) -> dict:
    from hpbroker.client import Consumer

    c = Consumer(url, topic, partitions=parts, auto_offset_reset="earliest", fetch_max_wait_ms=50,
                 fetch_max_bytes=cfg["fetch_max_bytes"], **(cfg.get("keys") or {}))
    for p in parts:
        c.seek(p, 0)
    size = cfg["size"]
    lats: list[float] = []
    ready_q.put(("ready", idx, None))
    go.wait()
    perf = time.perf_counter
    count, t0, tfirst = 0, perf(), None
    count = _drain(c, parts, ends, counters, idx, size, lats, 0)
    t1 = perf()
    out = {"consumed": count, "seconds": t1 - t0, "e2e_lat_s": np.array(lats, dtype=np.float64)}
    del tfirst
    if cfg.get("replay"):
        for p in parts:
            c.seek(p, 0)
        t2 = perf()
        n2 = _drain(c, parts, ends, None, idx, size, None, 0)
        out["replayed"] = n2
        out["replay_seconds"] = perf() - t2
    c.close()
    return out


def _drain(c, parts, ends, counters, idx, size, lats, count) -> int:
    now_ns = time.time_ns
    hdr, ent = B.HEADER_SIZE, B.ENTRY_SIZE
    while True:
        for rb in c.poll_batches(timeout_ms=50):
            count += rb.record_count - (rb.start_offset - rb.base_offset)
            if lats is not None:
                data = rb.data
                t = now_ns()
                for pos, h in B.iter_batches(data):
                    if size >= 8 and B.record_table(data, pos, 1)["key_len"][0] < 0:
                        sent = _TS.unpack_from(data, pos + hdr + h.record_count * ent)[0]
                        lats.append((t - sent) / 1e9)
                    else:
                        lats.append((t / 1e6 - h.first_timestamp) / 1e3)
            if counters is not None:
                counters[idx] = count
        done = True
        for p in parts:
            e = ends[p]
            if e < 0 or c.position(p) < e:
                done = False
                break
        if done:
            return count
