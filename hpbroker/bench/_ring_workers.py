"""Child-process bodies and measurements for ``hpbroker-bench ring`` (and the asv suite).

Each measurement starts one child with multiprocessing ``spawn``, runs the
same records through the hpbroker ring and through a plain pyzmq ``ipc://``
PUSH/PULL pair, and returns plain numbers.  The parent is the consumer and
does the timing: from "go" until it has received the last record.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time

import numpy as np

READY_TIMEOUT = 30.0


def _payload(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()


# -- child bodies ------------------------------------------------------------------------
def ring_producer(instance, name, size, count, batch, ready, go):
    from hpbroker.ring import SharedRing

    sr = SharedRing.attach(instance, name)
    w = sr.writer(full_timeout_ms=30_000)
    payload = _payload(size)
    ready.set()
    go.wait(READY_TIMEOUT)
    if batch > 1:
        chunk = [payload] * batch
        for _ in range(count // batch):
            w.write_many(chunk)
        w.write_many(chunk[: count % batch])
    else:
        write = w.write
        for _ in range(count):
            write(payload)
    w.close()
    sr.close()


def zmq_producer(addr, size, count, ready, go):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    payload = _payload(size)
    copy = size < 8192  # pyzmq's advice: zero-copy only pays for large messages
    ready.set()
    go.wait(READY_TIMEOUT)
    send = s.send
    for _ in range(count):
        send(payload, copy=copy)
    s.close(linger=-1)
    ctx.term()


def ring_echo(instance, ping, pong, count, ready):
    from hpbroker.ring import SharedRing

    a = SharedRing.attach(instance, ping)
    b = SharedRing.attach(instance, pong)
    r = a.reader()
    w = b.writer()
    ready.set()
    for _ in range(count):
        _, view = r.receive(timeout=READY_TIMEOUT)
        w.write(view)
        r.release()
    a.close()
    b.close()


def zmq_echo(addr_in, addr_out, count, ready):
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(addr_in)
    push = ctx.socket(zmq.PUSH)
    push.connect(addr_out)
    ready.set()
    for _ in range(count):
        push.send(pull.recv(copy=False), copy=False)
    pull.close()
    push.close(linger=-1)
    ctx.term()


# -- measurements (parent side) --------------------------------------------------------------
def _start(target, *args):
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=target, args=(*args, ready, go) if target in (ring_producer, zmq_producer) else (*args, ready))
    p.start()
    return p, ready, go


def _finish(p) -> None:
    p.join(READY_TIMEOUT)
    if p.is_alive():
        p.kill()  # by pid: this Process object is the child we started
        p.join()
        raise RuntimeError("benchmark child did not finish")


def _instance() -> str:
    return f"bench{os.getpid()}"


def ring_throughput(size: int, count: int, capacity: int = 8 << 20, batch: int = 1, copy_out: bool = False) -> float:
    """Seconds to move ``count`` records of ``size`` bytes through a ring to a draining reader.

    The reader's handler gets a zero-copy view; with ``copy_out`` it also
    copies every record out (``bytes(view)``), as a consumer that keeps it would.
    """
    from hpbroker.ring import RingClosed, SharedRing

    inst = _instance()
    with SharedRing.create(inst, "tput", capacity) as sr:
        r = sr.reader()
        p, ready, go = _start(ring_producer, inst, "tput", size, count, batch)
        if not ready.wait(READY_TIMEOUT):
            _finish(p)
        got = 0
        seen = [0]

        if copy_out:

            def handler(t, view):
                bytes(view)
                seen[0] += 1

        else:

            def handler(t, view):
                seen[0] += 1

        drain, wait = r.drain, r.wait
        go.set()
        t0 = time.perf_counter()
        try:
            while got < count:
                got += drain(handler)
                if got < count:
                    wait(READY_TIMEOUT)
        except RingClosed:
            pass
        elapsed = time.perf_counter() - t0
        _finish(p)
    if seen[0] != count:
        raise RuntimeError(f"ring delivered {seen[0]} of {count} records")
    return elapsed


def zmq_throughput(size: int, count: int) -> float:
    """Seconds to move ``count`` records of ``size`` bytes over pyzmq ipc:// PUSH/PULL."""
    import zmq

    d = tempfile.mkdtemp(prefix="hpb-bench-")
    addr = f"ipc://{d}/tput"
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(addr)
    try:
        p, ready, go = _start(zmq_producer, addr, size, count)
        ready.wait(READY_TIMEOUT)
        copy = size < 8192
        recv = s.recv
        go.set()
        t0 = time.perf_counter()
        for _ in range(count):
            recv(copy=copy)
        elapsed = time.perf_counter() - t0
        _finish(p)
    finally:
        s.close(linger=0)
        ctx.term()
        shutil.rmtree(d, ignore_errors=True)
    return elapsed


def ring_latency(size: int, count: int, capacity: int = 1 << 20, spin_us: float = 50) -> np.ndarray:
    """One-way hand-off latencies in microseconds (half of each ping-pong round trip)."""
    from hpbroker.ring import SharedRing

    inst = _instance()
    payload = _payload(size)
    with SharedRing.create(inst, "ping", capacity) as a, SharedRing.create(inst, "pong", capacity) as b:
        w = a.writer(spin_us=spin_us)
        r = b.reader(spin_us=spin_us)
        p, ready, _ = _start(ring_echo, inst, "ping", "pong", count)
        ready.wait(READY_TIMEOUT)
        out = np.empty(count, dtype=np.int64)
        clock = time.perf_counter_ns
        for i in range(count):
            t0 = clock()
            w.write(payload)
            r.receive(timeout=READY_TIMEOUT)
            r.release()
            out[i] = clock() - t0
        _finish(p)
    return out / 2000.0


def zmq_latency(size: int, count: int) -> np.ndarray:
    import zmq

    d = tempfile.mkdtemp(prefix="hpb-bench-")
    a_in, a_out = f"ipc://{d}/ping", f"ipc://{d}/pong"
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind(a_in)
    pull = ctx.socket(zmq.PULL)
    pull.bind(a_out)
    payload = _payload(size)
    try:
        p, ready, _ = _start(zmq_echo, a_in, a_out, count)
        ready.wait(READY_TIMEOUT)
        out = np.empty(count, dtype=np.int64)
        clock = time.perf_counter_ns
        for i in range(count):
            t0 = clock()
            push.send(payload)
            pull.recv(copy=False)
            out[i] = clock() - t0
        _finish(p)
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
        shutil.rmtree(d, ignore_errors=True)
    return out / 2000.0
