"""Rings between real processes over real POSIX shared memory.

Every child is a ``subprocess`` started by this module and stopped by its
pid.  Instance names are "testring<pid>..."; the module fixture checks that nothing
named ``hpb.*test*`` is left in /dev/shm afterwards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import crc32c
import numpy as np
import pytest

from hpbroker.ring import (
    Doorbell, PeerDead, ReaderGroup, RingClosed, SharedRing, cleanup_stale, layout as L, list_segments,
)

SHM = "/dev/shm"


PREFIX = f"testring{os.getpid()}"  # every instance name of this session; "test" in it, pid-unique


def _ours(fname: str, prefix: str = PREFIX) -> bool:
    return fname.startswith((f"hpb.{prefix}", f"sem.hpb.{prefix}"))


@pytest.fixture(scope="module", autouse=True)
def no_shm_leftovers():
    """Clean what dead earlier runs of this module left, then check this run leaves nothing."""
    for fname in os.listdir(SHM):
        if _ours(fname, "testring"):
            parts = fname.split(".")
            cleanup_stale(parts[2] if fname.startswith("sem.") else parts[1])  # only dead owners
    yield
    left = sorted(f for f in os.listdir(SHM) if _ours(f))
    assert left == [], f"shared memory left behind: {left}"


@pytest.fixture
def slow_enabled(request):
    """Slow tests run only when asked for: ``-m slow`` or HPB_SLOW=1."""
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("HPB_SLOW"):
        pytest.skip("slow: run with -m slow or HPB_SLOW=1")


def inst(tag: str) -> str:
    return f"{PREFIX}{tag}"


class Child:
    """A python subprocess running ``code``; killed by pid on exit."""

    def __init__(self, code: str, *args) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
        )

    def line(self) -> str:
        return self.p.stdout.readline().strip()

    def kill(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        self.p.stdout.close()
        self.p.stdin.close()


# -- cross-process stress ----------------------------------------------------------------
def plan_stream(n: int, capacity: int, alignment: int, seed: int):
    """Sizes, pool offsets and write modes for ``n`` records, steering into every wrap-around case.

    The producer position is simulated so "exact fit at the end" and "one
    byte too big, so padding" records are aimed at deliberately.
    """
    rng = np.random.default_rng(seed)
    maxp = L.max_payload(capacity)
    kind = rng.choice(5, size=n, p=[0.45, 0.3, 0.05, 0.1, 0.1]).tolist()
    small = rng.integers(0, 129, n).tolist()
    anys = rng.integers(0, maxp + 1, n).tolist()
    modes = rng.choice(4, size=n, p=[0.4, 0.15, 0.4, 0.05]).astype(np.int8)
    sizes = np.empty(n, dtype=np.int64)
    stats = dict(exact_fit=0, padding=0, max_size=0, empty=0)
    tail, mask = 0, capacity - 1
    for i in range(n):
        k = kind[i]
        to_end = capacity - (tail & mask)
        if k == 0:
            s = small[i]
        elif k == 1:
            s = anys[i]
        elif k == 2:
            s = maxp
        elif k == 3:
            s = to_end - 8 if to_end - 8 <= maxp else anys[i]
        else:
            s = to_end - 8 + 1 if to_end - 8 + 1 <= maxp else anys[i]
        rec = L.align(s + 8, alignment)
        if rec > to_end:
            tail += to_end
            stats["padding"] += 1
        tail += rec
        stats["exact_fit"] += (tail & mask) == 0 and rec == to_end
        stats["max_size"] += s == maxp
        stats["empty"] += s == 0
        sizes[i] = s
    pool = rng.integers(0, 256, (1 << 20) + maxp, dtype=np.uint8)
    offs = rng.integers(0, 1 << 20, n)
    return sizes, offs, modes, pool, stats


STRESS_WRITER = """
    import sys, numpy as np, crc32c
    from hpbroker.ring import SharedRing
    inst, name, path = sys.argv[1:4]
    d = np.load(path)
    sizes, offs, modes = d["sizes"].tolist(), d["offs"].tolist(), d["modes"].tolist()
    pool = d["pool"].tobytes()
    sr = SharedRing.attach(inst, name)
    w = sr.writer(spin_us=20, full_timeout_ms=60000)
    print("ready", flush=True)
    crc, i, n = 0, 0, len(sizes)
    while i < n:
        m = modes[i]
        if m == 2:
            j = i
            while j < n and modes[j] == 2 and j - i < 64:
                j += 1
            batch = [pool[offs[k]:offs[k] + sizes[k]] for k in range(i, j)]
            w.write_many(batch, type_id=2)
            for b in batch:
                crc = crc32c.crc32c(b, crc)
            i = j
            continue
        s, o = sizes[i], offs[i]
        p = pool[o:o + s]
        if m == 1:
            v = w.claim(s, type_id=1)
            v[:] = p
            w.commit()
        elif m == 3:
            v = w.claim(s, type_id=3)
            v[: s // 2] = p[: s // 2]
            w.abort()
            w.write(p, type_id=3)
        else:
            w.write(p, type_id=0)
        crc = crc32c.crc32c(p, crc)
        i += 1
    w.close()
    print(crc, flush=True)
    sr.close()
"""


def run_stress(tmp_path, n: int, alignment: int, capacity: int = 1 << 16, seed: int = 1):
    sizes, offs, modes, pool, stats = plan_stream(n, capacity, alignment, seed)
    assert stats["exact_fit"] > 0 and stats["padding"] > 0 and stats["max_size"] > 0 and stats["empty"] > 0
    path = tmp_path / f"plan{alignment}.npz"
    np.savez(path, sizes=sizes, offs=offs, modes=modes, pool=pool)
    pool_b = pool.tobytes()
    sizes_l, offs_l, modes_l = sizes.tolist(), offs.tolist(), modes.tolist()
    i = 0
    crc = 0

    def check(t, view):
        nonlocal i, crc
        s, o = sizes_l[i], offs_l[i]
        if t != modes_l[i] or bytes(view) != pool_b[o : o + s]:
            raise AssertionError(f"record {i}: type {t}, {len(view)} bytes, expected type {modes_l[i]}, {s} bytes")
        crc = crc32c.crc32c(view, crc)
        i += 1

    name = f"stress{alignment}"
    with SharedRing.create(inst("s"), name, capacity, alignment=alignment) as sr:
        r = sr.reader(spin_us=20)
        with Child(STRESS_WRITER, inst("s"), name, path) as child:
            assert child.line() == "ready"
            try:
                while True:
                    r.drain(check, 4096)
                    assert r.wait(timeout=30), "reader stuck: no record and no close within 30 s"
            except RingClosed:
                pass
            assert i == n
            assert int(child.line()) == crc  # same crc32c over the whole stream, in order
            assert child.p.wait(30) == 0


@pytest.mark.parametrize("alignment", [8, 64])
def test_stress_across_processes(tmp_path, alignment):
    run_stress(tmp_path, 1_000_000, alignment, seed=alignment)


@pytest.mark.slow
@pytest.mark.parametrize("alignment", [8, 64])
def test_stress_across_processes_long(tmp_path, alignment, slow_enabled):
    run_stress(tmp_path, 5_000_000, alignment, capacity=1 << 14, seed=100 + alignment)


# -- kill -9 of the writer ---------------------------------------------------------------
KILL_WRITER = """
    import os, sys, signal, numpy as np
    from hpbroker.ring import SharedRing
    inst, name, seed, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(seed)
    sr = SharedRing.attach(inst, name)
    w = sr.writer(spin_us=10, full_timeout_ms=60000)
    K, P = 997, 1 << 16
    sizes = rng.integers(0, sr.ring.max_payload + 1, K).tolist()
    pool = rng.integers(0, 256, P + sr.ring.max_payload, dtype=np.uint8).tobytes()
    print("ready", flush=True)
    seq = 0
    while True:
        s = sizes[seq % K]
        o = (seq * 7919) % P
        p = pool[o:o + s]
        if seq == kill_at:
            v = w.claim(s)
            v[: s // 2] = p[: s // 2]     # half a payload, then die
            os.kill(os.getpid(), signal.SIGKILL)
        if seq % 5 == 4:
            batch = []
            for k in range(seq, seq + 8):
                batch.append(pool[(k * 7919) % P:(k * 7919) % P + sizes[k % K]])
            if kill_at < 0 or seq + 8 <= kill_at:
                w.write_many(batch)
                seq += 8
                continue
        w.write(p)
        seq += 1
"""


def _expected(seed: int, max_payload: int):
    rng = np.random.default_rng(seed)
    K, P = 997, 1 << 16
    sizes = rng.integers(0, max_payload + 1, K).tolist()
    pool = rng.integers(0, 256, P + max_payload, dtype=np.uint8).tobytes()
    return lambda seq: pool[(seq * 7919) % P : (seq * 7919) % P + sizes[seq % K]]


def test_kill_minus_9_writer_never_yields_a_partial_record():
    rounds = 16
    rnd = random.Random(7)
    capacity = 1 << 15
    for rnd_i in range(rounds):
        self_kill = rnd_i % 2 == 0
        kill_at = rnd.randrange(0, 3000) if self_kill else -1
        seed = 1000 + rnd_i
        name = f"kill{rnd_i}"
        with SharedRing.create(inst("k"), name, capacity) as sr:
            r = sr.reader(spin_us=10)
            expect = _expected(seed, sr.ring.max_payload)
            got = 0

            def check(t, view):
                nonlocal got
                if bytes(view) != expect(got):
                    raise AssertionError(f"round {rnd_i}: record {got} is not the record that was written")
                got += 1

            with Child(KILL_WRITER, inst("k"), name, seed, kill_at) as child:
                assert child.line() == "ready"
                killed_at = [None]
                if not self_kill:
                    def kill():
                        killed_at[0] = time.monotonic()
                        os.kill(child.p.pid, signal.SIGKILL)

                    timer = threading.Timer(rnd.uniform(0.002, 0.15), kill)
                    timer.start()
                try:
                    with pytest.raises(PeerDead):
                        while True:
                            r.drain(check)
                            assert r.wait(timeout=10), "reader did not unblock"
                    unblocked = time.monotonic()
                finally:
                    if not self_kill:
                        timer.join()
                assert r.drain(check) == 0  # nothing complete is left behind
                assert child.p.wait(10) == -signal.SIGKILL
                if self_kill:
                    assert got == kill_at
                else:
                    assert unblocked - killed_at[0] < 1.0, "reader took more than a second to notice"
                assert got > 0 or self_kill


READER_CHILD = """
    import sys, time
    from hpbroker.ring import SharedRing
    sr = SharedRing.attach(sys.argv[1], sys.argv[2])
    r = sr.reader()
    print("ready", flush=True)
    r.read(timeout=30)
    print("read", flush=True)
    time.sleep(60)
"""


def test_writer_notices_a_dead_reader():
    with SharedRing.create(inst("d"), "deadreader", 1 << 14) as sr:
        w = sr.writer(full_timeout_ms=20_000)
        with Child(READER_CHILD, inst("d"), "deadreader") as child:
            assert child.line() == "ready"
            w.write(b"hello")
            assert child.line() == "read"
            child.kill()
            t0 = time.monotonic()
            with pytest.raises(PeerDead):
                while True:
                    w.write(b"x" * 1000)
            assert time.monotonic() - t0 < 1.0 + 0.5


def test_stopped_writer_is_dead_by_heartbeat(tmp_path):
    """SIGSTOP keeps the pid alive but stops the heartbeat: dead after dead_after_ms."""
    code = """
        import sys, time
        from hpbroker.ring import SharedRing
        sr = SharedRing.attach(sys.argv[1], sys.argv[2], heartbeat_ms=20)
        w = sr.writer()
        print("ready", flush=True)
        time.sleep(60)
    """
    with SharedRing.create(inst("h"), "stopped", 1 << 14) as sr:
        r = sr.reader(dead_after_ms=300)
        with Child(code, inst("h"), "stopped") as child:
            assert child.line() == "ready"
            assert r.wait(timeout=0.5) is False  # alive and heartbeating: just no data
            os.kill(child.p.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(PeerDead):
                r.wait(timeout=10)
            assert time.monotonic() - t0 < 1.0


# -- lifecycle ---------------------------------------------------------------------------
OWNER_CHILD = """
    import sys, time
    from hpbroker.ring import SharedRing, Doorbell
    inst = sys.argv[1]
    bell = Doorbell(inst, "w0")
    a = SharedRing.create(inst, "a0-w0", 1 << 14, doorbell="w0")
    b = SharedRing.create(inst, "a1-w0", 1 << 14, doorbell="w0")
    c = SharedRing.create(inst, "solo", 1 << 14)
    a.writer().write(b"pending")
    print("ready", flush=True)
    time.sleep(60)
"""


def _objects(instance: str) -> list[str]:
    return sorted(f for f in os.listdir(SHM) if f.startswith((f"hpb.{instance}.", f"sem.hpb.{instance}.")))


def test_cleanup_stale_after_kill_minus_9():
    dead, live = inst("c"), inst("l")
    with Child(OWNER_CHILD, dead) as child:
        assert child.line() == "ready"
        child.kill()
    before = _objects(dead)
    assert f"hpb.{dead}.a0-w0" in before and f"sem.hpb.{dead}.w0.bell" in before and f"sem.hpb.{dead}.solo.bell" in before
    with SharedRing.create(live, "alive", 1 << 14) as keep:
        keep.reader()
        assert cleanup_stale(live) == []  # the owner is alive: nothing to remove
        removed = cleanup_stale(dead)
        assert sorted(n.lstrip("/") for n in removed) == sorted(x.removeprefix("sem.") for x in before)
        assert _objects(dead) == []
        assert f"hpb.{live}.alive" in _objects(live)
        with pytest.raises(FileExistsError):
            SharedRing.create(live, "alive", 1 << 14)
    assert _objects(live) == []  # a clean shutdown unlinks everything


def test_attach_and_create_errors():
    with pytest.raises(FileNotFoundError):
        SharedRing.attach(inst("e"), "nothere")
    with pytest.raises(ValueError):
        SharedRing.create(inst("e"), "bad.name", 1 << 14)
    with pytest.raises(ValueError):
        SharedRing.create(inst("e"), "odd", 5000)


def test_idle_reader_sleeps():
    with SharedRing.create(inst("i"), "idle", 1 << 14) as sr:
        r = sr.reader()
        w = sr.writer()
        cpu = time.process_time()
        assert r.wait(timeout=0.5) is False
        assert time.process_time() - cpu < 0.25  # it slept on the semaphore, it did not spin
        w.write(b"x")
        assert r.wait(timeout=0.5) is True


# -- one consumer, many rings, one doorbell ------------------------------------------------
GROUP_WRITER = """
    import sys, time, random
    from hpbroker.ring import SharedRing
    inst, n = sys.argv[1], int(sys.argv[2])
    rings = [SharedRing.attach(inst, f"a{i}-w0") for i in range(3)]
    ws = [r.writer() for r in rings]
    rnd = random.Random(3)
    print("ready", flush=True)
    for k in range(n):
        i = rnd.randrange(3)
        ws[i].write(f"{i}:{k}".encode())
        if k % 50 == 0:
            time.sleep(0.002)   # let the consumer fall asleep now and then
    for w in ws:
        w.close()
"""


def test_reader_group_across_processes_shares_one_doorbell():
    n = 3000
    i_ = inst("g")
    with Doorbell(i_, "w0") as bell:
        rings = [SharedRing.create(i_, f"a{i}-w0", 1 << 14, doorbell="w0") for i in range(3)]
        try:
            group = ReaderGroup([r.reader() for r in rings], bell.signal, spin_us=20)
            got = {0: [], 1: [], 2: []}

            def handler(t, v):
                ring, k = bytes(v).decode().split(":")
                got[int(ring)].append(int(k))

            with Child(GROUP_WRITER, i_, n) as child:
                assert child.line() == "ready"
                while group.readers:
                    group.drain(handler)
                    try:
                        assert group.wait(timeout=10)
                    except RingClosed as e:
                        e.reader.drain(handler)
                        group.remove(e.reader)
                assert child.p.wait(10) == 0
            assert sum(map(len, got.values())) == n
            for ks in got.values():
                assert ks == sorted(ks)  # per-ring order
        finally:
            for r in rings:
                r.close()
                r.unlink()


def test_ping_pong_across_processes_never_loses_a_wakeup():
    """spin 0: every wait sleeps on a semaphore; a lost wake-up would stall 30 s (the tick is huge)."""
    code = """
        import sys
        from hpbroker.ring import SharedRing
        a, b = SharedRing.attach(sys.argv[1], "ping"), SharedRing.attach(sys.argv[1], "pong")
        r, w = a.reader(spin_us=0), b.writer(spin_us=0)
        r.wait_strategy.tick_s = w.wait_strategy.tick_s = 30.0
        print("ready", flush=True)
        for _ in range(int(sys.argv[2])):
            w.write(r.read(timeout=60))
    """
    rounds = 1500
    i_ = inst("p")
    with SharedRing.create(i_, "ping", 1 << 14) as a, SharedRing.create(i_, "pong", 1 << 14) as b:
        w, r = a.writer(spin_us=0), b.reader(spin_us=0)
        r.wait_strategy.tick_s = w.wait_strategy.tick_s = 30.0
        with Child(code, i_, rounds) as child:
            assert child.line() == "ready"
            t0 = time.monotonic()
            for k in range(rounds):
                w.write(k.to_bytes(4, "little"))
                assert r.read(timeout=60) == k.to_bytes(4, "little")
            assert time.monotonic() - t0 < 25  # liveness: no 30 s stall happened
            assert child.p.wait(10) == 0


# -- hpbroker ring stat --------------------------------------------------------------------
def test_ring_stat_reads_without_disturbing(capsys):
    from hpbroker.cli import main

    i_ = inst("t")
    with SharedRing.create(i_, "acc0-w0", 1 << 16) as sr:
        w = sr.writer()
        w.write(b"x" * 1000)
        before = bytes(sr.ring.memory[L.HEADER_BYTES : L.HEADER_BYTES + 2048])
        assert main(["ring", "stat", "--instance", i_]) == 0
        out = capsys.readouterr().out
        assert "acc0-w0" in out and "65536" in out and str(os.getpid()) in out
        assert main(["ring", "stat", "--instance", i_, "--json"]) == 0
        row = json.loads(capsys.readouterr().out.splitlines()[0])
        assert row["capacity"] == 65536 and row["tail"] == 1008 and row["head"] == 0
        assert row["producer_pid"] == os.getpid() and row["owner_alive"] and not row["stale"]
        assert bytes(sr.ring.memory[L.HEADER_BYTES : L.HEADER_BYTES + 2048]) == before
        assert sr.ring.tail == 1008 and sr.ring.head == 0
    assert main(["ring", "stat", "--instance", i_]) == 1
    assert "no hpb.* ring segments" in capsys.readouterr().err


def test_list_segments_reports_invalid_headers():
    import posix_ipc

    name = f"/hpb.{inst('v')}.junk"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=100)
    shm.close_fd()
    try:
        (info,) = list_segments(inst("v"))
        assert info["valid"] is False and info["ring"] == "junk"
        assert cleanup_stale(inst("v")) == [name]
    finally:
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
