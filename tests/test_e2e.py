"""A million messages from several producer processes, consumed back in order."""

from __future__ import annotations

import multiprocessing
import zlib

import zmq

from hpbroker import batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from rawclient import RawClient

PRODUCERS = 4
PER_PRODUCER = 250_000
BATCH = 1000
PARTITIONS = 4


def payload(producer: int, i: int) -> bytes:
    head = b"%d:%d:" % (producer, i)
    return head + bytes([65 + (zlib.crc32(head) % 26)]) * (100 - len(head))


def _produce(url: str, producer: int, conn) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    inflight = 0
    errors = []
    rid = 0
    for start in range(0, PER_PRODUCER, BATCH):
        vals = [payload(producer, i) for i in range(start, start + BATCH)]
        rid += 1
        # one producer's messages go round-robin over partitions by batch
        s.send_multipart(codec.encode_request(
            m.Produce(id=rid, topic="million", partition=(start // BATCH) % PARTITIONS), [batch.encode_batch(vals)]))
        inflight += 1
        while inflight >= 32 or (start + BATCH >= PER_PRODUCER and inflight):
            if not s.poll(60_000):
                errors.append("timeout")
                inflight = 0
                break
            rep, _ = codec.decode_reply(s.recv_multipart())
            inflight -= 1
            if rep.code:
                errors.append(rep.message)
    conn.send(errors)
    conn.close()
    s.close()
    ctx.term()


def test_million_messages_several_producers(broker):
    mp = multiprocessing.get_context("spawn")
    procs, pipes = [], []
    for pid in range(PRODUCERS):
        parent, child = mp.Pipe(duplex=False)
        p = mp.Process(target=_produce, args=(broker.url, pid, child))
        p.start()
        procs.append(p)
        pipes.append(parent)
    try:
        errors = [pipe.recv() for pipe in pipes]
    finally:
        for p in procs:
            p.join(30)
            if p.exitcode is None:
                p.kill()
    assert errors == [[]] * PRODUCERS
    c = RawClient(broker.url)
    total = 0
    for part in range(PARTITIONS):
        last_seen = {}
        recs = c.fetch_all("million", part)
        assert [r.offset for r in recs] == list(range(len(recs)))
        for r in recs:
            prod, i, _ = r.value.split(b":", 2)
            prod, i = int(prod), int(i)
            assert r.value == payload(prod, i)
            assert (i // BATCH) % PARTITIONS == part
            assert i > last_seen.get(prod, -1), "per-partition order of one producer must hold"
            last_seen[prod] = i
        total += len(recs)
    assert total == PRODUCERS * PER_PRODUCER
    c.close()
