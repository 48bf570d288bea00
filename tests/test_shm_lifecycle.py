"""Shared memory after kill -9: a running broker has unlinked the names of
its rings and semaphores (every process has them mapped), so a kill -9 of
its whole process group leaves nothing in /dev/shm; and a start reclaims
what a broker killed while it was starting left, whatever its port
(docs/ring.md, "Lifecycle"; tools/sweep-shm is the sweep)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from procfaults import shm_sweep  # noqa: E402

from brokerproc import PORTS_USED, BrokerProcess, free_port
from hpbroker import batch
from hpbroker.ring import SharedRing, reclaim_dead
from rawclient import RawClient

SHM = "/dev/shm"


def objects(instance: str) -> list[str]:
    """/dev/shm entries of ``instance``: segments and semaphores."""
    return sorted(f for f in os.listdir(SHM) if f.removeprefix("sem.").startswith(f"hpb.{instance}."))


def test_kill_9_of_the_process_group_leaves_no_shared_memory(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--writers", "2", "--acceptors", "2")).start()
    instance = f"p{b.port}"
    try:
        c = RawClient(b.url)
        assert c.produce("shm", 0, [batch.encode_batch([b"x"] * 10)]).code == 0
        c.close()
        assert objects(instance) == []  # names gone while it serves
        r = subprocess.run([sys.executable, "-m", "hpbroker", "ring", "stat", "--instance", instance, "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert sorted(x["ring"] for x in rows) == ["a0w0", "a0w1", "a1w0", "a1w1"]
        assert all(x["unlinked"] and x["owner_alive"] and x["producer_state"] == "attached" for x in rows)
        assert sum(x["tail"] for x in rows) > 0  # the produce went through one of them
    finally:
        b.kill()  # kill -9 of the whole process group
    assert objects(instance) == []
    b.stop()


OWNER = """
    import sys, time
    from hpbroker.ring import Doorbell, SharedRing
    inst = sys.argv[1]
    rings = [SharedRing.create(inst, name, 1 << 14, doorbell="w0") for name in ("a0w0", "rw0")]
    rings.append(SharedRing.create(inst, "solo", 1 << 14))
    bell = Doorbell(inst, "w0")
    print("ready", flush=True)
    time.sleep(60)
"""


def _killed_owner(instance: str) -> None:
    """What a broker of ``instance`` killed before it unlinked its names leaves."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWNER), instance], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()


def test_reclaim_dead_removes_only_what_dead_owners_left(tmp_path):
    dead, live, young = f"p{free_port()}", f"p{free_port()}", f"p{free_port()}"
    for inst in (dead, live, young):
        PORTS_USED.add(int(inst[1:]))  # the suite's leak check covers them
    _killed_owner(dead)
    before = objects(dead)
    rings = ("a0w0", "rw0", "solo")
    assert before == sorted([f"hpb.{dead}.{r}" for r in rings] + [f"sem.hpb.{dead}.{r}.space" for r in rings]
                            + [f"sem.hpb.{dead}.solo.bell", f"sem.hpb.{dead}.w0.bell"])
    fd = os.open(f"{SHM}/hpb.{young}.a0w0", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)  # no header yet
    os.close(fd)
    try:
        with SharedRing.create(live, "a0w0", 1 << 14) as keep:
            keep.reader()
            removed = reclaim_dead()
            assert sorted(n.lstrip("/") for n in removed if f".{dead}." in n) == \
                sorted(n.removeprefix("sem.") for n in before)
            assert objects(dead) == []
            assert f"hpb.{live}.a0w0" in objects(live)  # its owner runs
            assert objects(young) == [f"hpb.{young}.a0w0"]  # may be being created right now
            assert f"/hpb.{young}.a0w0" in reclaim_dead(grace_s=0)  # once old enough, it goes
    finally:
        for n in objects(young):
            os.unlink(f"{SHM}/{n}")


def test_a_broker_start_reclaims_what_a_broker_on_another_port_left(tmp_path):
    dead = f"p{free_port()}"
    PORTS_USED.add(int(dead[1:]))
    _killed_owner(dead)
    assert objects(dead)
    b = BrokerProcess(tmp_path / "data").start()
    try:
        # gone once a broker has started: this one, or in a parallel run another
        # worker's broker that started first (nothing else removes them); this
        # one says so when it was the one
        assert objects(dead) == []
        if f"/hpb.{dead}." in b.log():
            assert "of other broker instances whose owner is dead" in b.log()
    finally:
        b.stop()


def test_sweep_short_kills_while_starting_are_reclaimed_kills_while_serving_leave_nothing():
    out = shm_sweep.run(2, seed=5, say=print, moments=("rings", "serving"))
    assert out["killed_serving"] >= 1 and out["killed_starting"] + out["killed_serving"] == 2  # "rings" may be late
    assert out["left_after_kill_serving"] == 0
    assert out["left_at_end"] == 0, out["left_at_end_names"]
