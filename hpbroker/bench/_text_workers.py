"""Load generators for ``hpbroker-bench text``, each run as its own process.

:func:`metaq_puts` speaks MetaQ's text protocol the way a pipelining MetaQ
client does, built here from the wire format (it imports nothing of
hpbroker's text listener): every connection keeps up to ``window`` puts in
flight, sends them in blocks of ``block`` prebuilt commands (as
redis-benchmark sends prebuilt commands), and counts the answers.  An
answer to a put is ``result CODE LEN OPAQUE\\r\\n`` and a body without CRLF,
so the answers are the CRLFs, and the good ones the ``result 200 ``s.

:func:`zmq_puts` sends the same count and size through hpbroker's
``Producer.send_batch`` (the ZeroMQ path), acks=1.
"""

from __future__ import annotations

import selectors
import socket
import time
import zlib


_OK = b"result 200 "


def count_answers(tail: bytes, data, size: int | None = None) -> tuple[int, int, bytes]:
    """(answer lines, good ones) that end in ``data[:size]``, given the
    stream's last 10 bytes before it (``tail``); and the new tail.  An
    occurrence cut by the chunk's start lies wholly in ``tail + data[:10]``
    and in neither half (each is shorter than what it counts)."""
    n_bytes = len(data) if size is None else size
    head = bytes(data[:min(10, n_bytes)])
    edge = tail + head
    n = data.count(b"\r\n", 0, n_bytes) + (tail[-1:] == b"\r" and head[:1] == b"\n")
    good = data.count(_OK, 0, n_bytes) + edge.count(_OK)
    return n, good, edge[-10:] if n_bytes < 10 else bytes(data[n_bytes - 10:n_bytes])


def metaq_puts(port: int, topic: str, partitions: int, connections: int, messages: int, size: int, start_at: float,
               window: int = 4096, block: int = 256, checksum: bool = True) -> dict:
    from hpbroker.procutil import tune_malloc

    tune_malloc()  # reused heap buffers, as the broker's processes (docs/design.md, "malloc")
    body = b"x" * size
    crc = zlib.crc32(body) & 0x7FFFFFFF if checksum else -1
    rbuf = bytearray(1 << 20)
    socks, state = [], {}
    per = messages // connections
    sel = selectors.DefaultSelector()
    for i in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        one = b"put %s %d %d 0 %d %d\r\n" % (topic.encode(), i % partitions, size, crc, i + 1) + body
        state[s] = {"one": one, "blk": one * block, "sent": 0, "acked": 0, "out": b"", "bad": 0, "tail": b"",
                    "events": selectors.EVENT_READ | selectors.EVENT_WRITE}
        socks.append(s)
        sel.register(s, state[s]["events"])
    R, W = selectors.EVENT_READ, selectors.EVENT_WRITE

    def fill(st) -> None:
        if not st["out"] and st["sent"] < per and st["sent"] - st["acked"] <= window - block:
            n = min(block, per - st["sent"])
            st["out"] = st["blk"] if n == block else st["one"] * n
            st["sent"] += n

    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    c0 = time.process_time()
    done = 0
    while done < connections:
        for key, ev in sel.select(5):
            s = key.fileobj
            st = state[s]
            if ev & R:
                got = s.recv_into(rbuf)
                if not got:
                    raise RuntimeError("the broker closed a text connection")
                n, good, st["tail"] = count_answers(st["tail"], rbuf, got)
                st["acked"] += n
                st["bad"] += n - good
                if st["acked"] >= per:
                    done += 1
                    sel.unregister(s)
                    continue
            fill(st)
            if st["out"]:
                try:
                    k = s.send(st["out"])
                    st["out"] = memoryview(st["out"])[k:] if k < len(st["out"]) else b""
                except BlockingIOError:
                    pass
                fill(st)
            want = R | (W if st["out"] else 0)  # writable only matters with something to write: no spinning
            if want != st["events"]:
                st["events"] = want
                sel.modify(s, want)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    for s in socks:
        s.close()
    return {"messages": per * connections, "seconds": elapsed, "bad": sum(st["bad"] for st in state.values()),
            "client_cpu_s": cpu}


def zmq_puts(url: str, topic: str, partitions: int, messages: int, size: int, start_at: float,
             batch: int = 10_000) -> dict:
    from hpbroker.client.producer import Producer

    value = b"x" * size
    chunks = [[value] * min(batch, messages - i) for i in range(0, messages, batch)]
    with Producer(url, acks=1) as p:
        p.send_batch(topic, [value], partition=0).result(30)  # connected, topic known
        while time.time() < start_at:
            time.sleep(0.001)
        t0 = time.perf_counter()
        c0 = time.process_time()
        futures = [p.send_batch(topic, c, partition=k % partitions) for k, c in enumerate(chunks)]
        for f in futures:
            f.result(120)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
    return {"messages": messages, "seconds": elapsed, "bad": 0, "client_cpu_s": cpu}
