"""One client process of the kill -9 sweep: pipelined produce requests, each
one batch, and one line on stdout per answer, flushed at once, so the sweep
knows every acknowledgement the client received before the broker died.

    python ingest_writer.py URL TOPIC PARTITIONS CYCLE WRITER SEED

Lines (space-separated):

====  =====================================================================
R     connected, about to send
A     acknowledged: partition base_offset count first_seq acks
E     refused: partition count first_seq acks code
D     done: requests sent, answered, unanswered, seconds from the first
      unanswered wait to the end (how long the client waited for nothing)
====  =====================================================================

Record ``seq`` of writer ``W`` in cycle ``C`` has the value
``b"C.W.seq|"`` padded with ``.`` to the writer's value size
(:func:`value`), so any record found in the log names itself, and a batch
is consecutive seqs of one writer.  Each writer draws, from its seed, its
value size, its records per batch (1 to 2000, log-uniform, at most 1 MiB)
and its share of acks=all (0, 0.5 or 1); every request draws its acks.
It stops when stdin closes or after 1 s without an answer while requests
are in flight (the broker is gone).
"""

from __future__ import annotations

import math
import random
import select
import sys
import time

import zmq

from hpbroker import batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m

WINDOW = 8  # requests in flight per writer
GONE_AFTER_S = 1.0


def value(cycle: int, writer: int, seq: int, size: int) -> bytes:
    v = b"%d.%d.%d|" % (cycle, writer, seq)
    return v + b"." * (size - len(v)) if size > len(v) else v


def parse(v: bytes) -> tuple[int, int, int]:
    """-> (cycle, writer, seq) of a value made by :func:`value`."""
    head = v[: v.index(b"|")]
    c, w, s = head.split(b".")
    return int(c), int(w), int(s)


def plan(seed: int) -> tuple[int, int, float]:
    """-> (value size, records per batch, share of acks=all) for a writer's seed."""
    rnd = random.Random(seed)
    size = rnd.choice((16, 100, 1000))
    per_batch = int(math.exp(rnd.uniform(0, math.log(2000))))
    per_batch = max(1, min(per_batch, (1 << 20) // (size + 16)))
    return size, per_batch, rnd.choice((0.0, 0.5, 1.0))


def main(argv: list[str]) -> int:
    url, topic, partitions, cycle, writer, seed = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    size, per_batch, share_all = plan(seed)
    rnd = random.Random(seed + 1)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    out = sys.stdout
    out.write("R\n")
    out.flush()
    inflight: dict[int, tuple[int, int, int, int]] = {}
    seq = req_id = sent = answered = 0
    stdin_open = True
    waited_since = None
    waited = 0.0
    while True:
        if stdin_open and select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.readline():
            stdin_open = False
        while stdin_open and len(inflight) < WINDOW:
            p = rnd.randrange(partitions)
            acks = -1 if rnd.random() < share_all else 1
            n = max(1, int(per_batch * rnd.uniform(0.5, 1.5)))
            b = batch.encode_batch([value(cycle, writer, s, size) for s in range(seq, seq + n)])
            req_id += 1
            sock.send_multipart(codec.encode_request(m.Produce(id=req_id, topic=topic, partition=p, acks=acks,
                                                               timeout_ms=10_000), [b]))
            inflight[req_id] = (p, n, seq, acks)
            seq += n
            sent += 1
        if not inflight:
            break
        if not sock.poll(100):
            waited_since = waited_since or time.monotonic()
            if time.monotonic() - waited_since >= GONE_AFTER_S:
                waited = time.monotonic() - waited_since
                break
            continue
        waited_since = None
        rep, _ = codec.decode_reply(sock.recv_multipart())
        got = inflight.pop(rep.id, None)
        if got is None:
            continue
        answered += 1
        p, n, first, acks = got
        if rep.code == 0:
            out.write(f"A {p} {rep.base_offsets[0]} {n} {first} {acks}\n")
        else:
            out.write(f"E {p} {n} {first} {acks} {rep.code}\n")
        out.flush()
    out.write(f"D {sent} {answered} {len(inflight)} {waited:.3f}\n")
    out.flush()
    sock.close(0)
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
