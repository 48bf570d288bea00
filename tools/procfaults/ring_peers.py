"""Ring peers killed mid-record: the broker's acceptor-to-writer hand-off,
in two real processes over a real shared-memory ring, one of them killed
with SIGKILL in the middle of a record.

The ring, the doorbell and both endpoints are made exactly as the broker
makes them (``broker/host.create_rings``; ``net/acceptor.main`` takes a
ring writer, ``broker/writer_process.main`` a ``ReaderGroup`` on the
doorbell), and the records are ``ipc/handoff`` PRODUCE records carrying
real CRC32C'd batches.  Two kinds of cycle:

``acceptor``
    the child is the acceptor: it hands off one request after another
    (``put_record``'s claim, fill, commit) until it is killed; the parent is
    the disk writer draining the ring.  The parent must raise ``PeerDead``
    within 1 s of the death, and every record it ever read must be whole:
    consecutive tokens from 0, each batch's CRC and bytes as sent.
``writer``
    the child is the disk writer: it drains, decodes every record and
    CRC-checks its batches, and prints each token once handled; the parent
    is the acceptor, handing off until ``hand_off`` refuses with "the
    partition's writer is gone" (the ring fills, and a producer waiting for
    space judges the reader).  That must come within 1 s of the death.  A
    new reader then attaches and drains what is left: whole records only,
    continuing at or before the first token the dead one had not finished
    (records a killed reader took but never released are read again; the
    broker never re-attaches, it restarts, but the ring must never hand out
    half a record).

Each cycle kills either at a chosen record (``self``: after the claim or
the read, half the bytes copied or checked, the child kills itself) or at
a random time (``random``: the parent's SIGKILL); a status word the child
sets around each record says whether a random kill landed mid-record.  The
time of death is the child's CLOCK_MONOTONIC as it kills itself, or the
parent's as it sends the SIGKILL (one clock for every process).
"""

from __future__ import annotations

import functools
import mmap
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from procfaults.common import env, progress, summary

from hpbroker import batch
from hpbroker.ipc import handoff
from hpbroker.net.produce import hand_off
from hpbroker.protocol.errors import BrokerError
from hpbroker.ring import Doorbell, PeerDead, ReaderGroup, RingClosed, SharedRing

CAPACITY = 8 << 20  # largest record: 1 MiB
TOPIC = b"peers"
NOTICE_LIMIT_S = 1.0


@functools.lru_cache(maxsize=None)
def _batches(kind: int) -> list[bytes]:
    rnd = random.Random(kind)
    out = []
    for _ in range(rnd.randint(1, 3)):
        n = rnd.randint(1, 300)
        size = rnd.randint(200, 1000)
        out.append(bytes(batch.encode_batch([(b"%d:%d:" % (kind, i)).ljust(size, b"#") for i in range(n)],
                                            timestamp_ms=1_700_000_000_000)))
    return out


def batches_for(token: int) -> list[bytes]:
    """The batches of request ``token``: 1-3 CRC32C'd batches, up to ~900 KiB in all, one of 32 contents
    (made once: the time of a cycle goes into copying records, where a random kill should land)."""
    return _batches(token % 32)


# The child's status word (a shared file mapping): 1 while inside a record, 0 between records.
CHILD = r'''
import mmap, os, signal, sys, time
from hpbroker import batch
from hpbroker.ipc import handoff
from hpbroker.ring import Doorbell, ReaderGroup, SharedRing
sys.path.insert(0, sys.argv[6])
from procfaults.ring_peers import TOPIC, batches_for
role, inst, status_path, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(status_path, "r+b") as f:
    status = mmap.mmap(f.fileno(), 8)
sr = SharedRing.attach(inst, "a0w0")
if role == "acceptor":
    ring = sr.writer(spin_us=0, full_timeout_ms=60_000, dead_after_ms=1000)
    print("ready", flush=True)
    token = 0
    while True:
        bs = batches_for(token)
        size = handoff.record_size(TOPIC, sum(map(len, bs)))
        buf = ring.claim(size, handoff.PRODUCE, 60.0)       # put_record, with the status word around it
        status[0] = 1
        if token == kill_at:
            whole = bytearray(size)
            handoff.write_record(whole, token, TOPIC, 0, bs)
            buf[: size // 2] = whole[: size // 2]           # half a record copied, then die
            print(time.monotonic(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        handoff.write_record(buf, token, TOPIC, 0, bs)
        ring.commit()
        status[0] = 0
        token += 1
else:
    bell = Doorbell(inst, "w0")
    group = ReaderGroup([sr.reader(spin_us=0, dead_after_ms=1000)], bell.signal, spin_us=0)
    def on_record(type_id, view):
        status[0] = 1
        token, topic, p, count, epoch, arg, pos = handoff.read_record(view)
        for i, (bpos, h) in enumerate(batch.iter_batches(view, pos)):
            if token == kill_at and i == count // 2:
                print("K", time.monotonic(), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)        # half the batches checked, record never released
            batch.check_batch(view, bpos, h.batch_length)
        bytes(view)                                         # the append's copy
        print(token, flush=True)
        status[0] = 0
    print("ready", flush=True)
    while True:
        group.drain(on_record)
        group.wait(0.1)
'''


def _status_file(d: str) -> tuple[str, mmap.mmap]:
    path = os.path.join(d, "status")
    with open(path, "wb") as f:
        f.write(bytes(8))
    with open(path, "r+b") as f:
        return path, mmap.mmap(f.fileno(), 8)


def _child(role: str, inst: str, status_path: str, kill_at: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, role, inst, status_path, str(kill_at), "-",
                             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
                            stdout=subprocess.PIPE, text=True, env=env())


def _check_record(view, expect_token: int) -> None:
    token, topic, p, count, epoch, arg, pos = handoff.read_record(view)
    if token != expect_token:
        raise AssertionError(f"record {token} where {expect_token} was due")
    want = batches_for(token)
    got = [bytes(view[bpos:bpos + h.batch_length]) for bpos, h in batch.iter_batches(view, pos)]
    for bpos, h in batch.iter_batches(view, pos):
        batch.check_batch(view, bpos, h.batch_length)
    if topic.encode() != TOPIC or count != len(want) or got != want or pos + sum(map(len, want)) != len(view):
        raise AssertionError(f"record {token} is not the record that was handed off")


def acceptor_killed(inst: str, tmp: str, mode: str, rnd: random.Random) -> dict:
    """The parent is the writer: it must notice the dead acceptor and never read half a record."""
    status_path, status = _status_file(tmp)
    sr = SharedRing.create(inst, "a0w0", CAPACITY, doorbell="w0")
    bell = Doorbell(inst, "w0")
    child = None
    try:
        group = ReaderGroup([sr.reader(spin_us=0, dead_after_ms=1000)], bell.signal, spin_us=0)
        kill_at = rnd.randrange(1, 60) if mode == "self" else -1
        child = _child("acceptor", inst, status_path, kill_at)
        assert child.stdout.readline().strip() == "ready"
        killed = []
        got = [0]

        def on_record(type_id, view):
            assert type_id == handoff.PRODUCE
            _check_record(view, got[0])
            got[0] += 1

        mid = None
        if mode == "random":
            timer = threading.Timer(rnd.uniform(0.01, 0.3), lambda: (killed.append(time.monotonic()), child.kill()))
            timer.start()
        deadline = time.monotonic() + 30
        while True:
            group.drain(on_record)
            try:
                group.wait(0.1)
            except (PeerDead, RingClosed):
                noticed = time.monotonic()
                break
            if time.monotonic() > deadline:
                raise AssertionError("the dead acceptor was never noticed")
        if mode == "random":
            timer.join()
            died = killed[0]
        else:
            died = float(child.stdout.readline())  # the child's CLOCK_MONOTONIC as it killed itself
        mid = bool(status[0]) if mode == "random" else True
        if child.wait(10) != -9:
            raise AssertionError(f"the acceptor child ended with {child.returncode}, not by SIGKILL")
        left = group.drain(on_record) if group.readers else 0
        if left:
            raise AssertionError(f"{left} whole records were left behind when PeerDead was raised")
        if mode == "self" and got[0] != kill_at:
            raise AssertionError(f"read {got[0]} records, the acceptor completed {kill_at}")
        return dict(records=got[0], mid_record=mid, notice_s=noticed - died)
    finally:
        if child is not None:
            child.kill()
            child.wait()
            child.stdout.close()
        status.close()
        sr.close()
        sr.unlink()
        bell.close()
        bell.unlink()


def writer_killed(inst: str, tmp: str, mode: str, rnd: random.Random) -> dict:
    """The parent is the acceptor: hand_off must refuse within 1 s of the writer's death; a new
    reader then finds only whole records."""
    status_path, status = _status_file(tmp)
    sr = SharedRing.create(inst, "a0w0", CAPACITY, doorbell="w0")
    bell = Doorbell(inst, "w0")
    child = None
    try:
        ring = sr.writer(spin_us=0, full_timeout_ms=30_000, dead_after_ms=1000)
        kill_at = rnd.randrange(1, 60) if mode == "self" else -1
        child = _child("writer", inst, status_path, kill_at)
        assert child.stdout.readline().strip() == "ready"
        lines: list[str] = []
        reader_t = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
        reader_t.start()
        killed = []
        if mode == "random":
            timer = threading.Timer(rnd.uniform(0.01, 0.3), lambda: (killed.append(time.monotonic()), child.kill()))
            timer.start()
        token = 0
        deadline = time.monotonic() + 60
        while True:
            try:
                hand_off(ring, token, TOPIC, 0, batches_for(token), 0, 30.0)
            except BrokerError as e:
                noticed = time.monotonic()
                if "writer is gone" not in e.message:
                    raise
                break
            token += 1
            if time.monotonic() > deadline:
                raise AssertionError("the dead writer was never noticed")
        if mode == "random":
            timer.join()
        reader_t.join(10)
        handled = [int(x) for x in lines if not x.startswith("K")]
        died = killed[0] if mode == "random" else float(next(x for x in lines if x.startswith("K")).split()[1])
        mid = bool(status[0]) if mode == "random" else True
        if child.wait(10) != -9:
            raise AssertionError(f"the writer child ended with {child.returncode}, not by SIGKILL")
        finished = max(handled, default=-1)
        # what a new reader finds: whole records, from at or before the first one the dead reader had not finished
        after = SharedRing.attach(inst, "a0w0")
        seen = []
        try:
            r = after.reader(spin_us=0, dead_after_ms=None)

            def on_record(type_id, view):
                token_here = handoff.read_record(view)[0]
                _check_record(view, seen[-1] + 1 if seen else token_here)
                seen.append(token_here)

            r.drain(on_record)
        finally:
            after.close()
        if seen and (seen[0] > finished + 1 or seen[-1] != token - 1):
            raise AssertionError(f"after the dead writer: records {seen[0]}..{seen[-1]}, it had finished "
                                 f"{finished}, {token} were handed off")
        return dict(records=token, mid_record=mid, notice_s=noticed - died, reread=max(0, finished + 1 - seen[0])
                    if seen else 0)
    finally:
        if child is not None:
            child.kill()
            child.wait()
            child.stdout.close()
        status.close()
        sr.close()
        sr.unlink()
        bell.close()
        bell.unlink()


def run(cycles: int, seed: int = 1, say=progress) -> dict:
    """``cycles`` cycles alternating acceptor/writer kills and self/random kill points."""
    rnd = random.Random(seed)
    res: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="hpb-ring-peers-") as tmp:
        for i in range(cycles):
            side = ("acceptor", "writer")[i % 2]
            mode = ("self", "random")[(i // 2) % 2]
            inst = f"peers{os.getpid()}c{i}"
            r = (acceptor_killed if side == "acceptor" else writer_killed)(inst, tmp, mode, rnd)
            res.setdefault(f"{side} killed, {mode}", []).append(r)
            say(f"cycle {i + 1}/{cycles}: {side} killed ({mode}{', mid-record' if r['mid_record'] else ''}) after "
                f"{r['records']} records; noticed in {r['notice_s']:.3f} s"
                + (f"; {r['reread']} taken-but-unreleased records read again by a new reader" if r.get("reread") else ""))
    out = {}
    for k, rs in res.items():
        out[k] = dict(cycles=len(rs), mid_record=sum(r["mid_record"] for r in rs),
                      notice_s=sorted(r["notice_s"] for r in rs),
                      over_limit=sum(r["notice_s"] > NOTICE_LIMIT_S for r in rs))
    return out


def describe(out: dict) -> list[str]:
    return [f"{k}: {v['cycles']} cycles ({v['mid_record']} mid-record), noticed {summary(v['notice_s'])}, "
            f"over {NOTICE_LIMIT_S:.0f} s: {v['over_limit']}" for k, v in out.items()]
