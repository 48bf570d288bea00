"""Shared memory after kill -9: start brokers on random ports and kill -9
each one's whole process group at a random moment, while it starts or
after it serves, then count what each left in /dev/shm.

Per cycle: ``python -m hpbroker serve`` on a free port (its own session,
1-2 writers and acceptors, a fresh data dir); kill -9 of its process group
at one of three kinds of moment, drawn at random: 0.05-3 s after the
spawn, 0-1 s after its log says writer0 started (the rings exist, the
children are attaching: the window before the names are unlinked), or
0-0.5 s after it serves; then the /dev/shm objects of its
instance and their bytes.  The next cycle's broker starts on another port:
``reclaim_dead`` there must remove what the previous one left.  After the
last cycle one more broker starts and stops cleanly, and the objects of
every killed instance are counted again: the target is 0.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procfaults.common import SHM, BrokerProcess, env, free_port, progress, shm_objects

from brokerproc import PORTS_USED


def _bytes(names: list[str]) -> int:
    total = 0
    for n in names:
        try:
            total += os.stat(os.path.join(SHM, n)).st_size
        except OSError:
            pass
    return total


def _seen(log: Path, text: str) -> bool:
    try:
        return text in log.read_text(errors="replace")
    except OSError:
        return False


def _wait_for(log: Path, p: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not _seen(log, text) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def run(cycles: int, seed: int = 1, say=progress, moments: tuple[str, ...] | None = None) -> dict:
    """``moments``: the kind of kill moment of each cycle in turn (default: drawn)."""
    rnd = random.Random(seed)
    killed: list[str] = []
    phases = {"starting": [0, 0, 0], "serving": [0, 0, 0]}  # cycles, objects left, bytes left
    with tempfile.TemporaryDirectory(prefix="hpb-sweep-shm-") as tmp:
        for i in range(cycles):
            port = free_port()
            PORTS_USED.add(port)  # the test suite's leak check covers these instances too
            instance = f"p{port}"
            log = Path(tmp) / f"{instance}.log"
            data = Path(tmp) / f"data{i}"
            cmd = [sys.executable, "-m", "hpbroker", "serve", "--port", str(port), "--data-dir", str(data),
                   "--writers", str(rnd.randint(1, 2)), "--acceptors", str(rnd.randint(1, 2))]
            with open(log, "wb") as out:
                p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env())
            when = moments[i % len(moments)] if moments else rnd.choice(("early", "rings", "serving"))
            if when == "early":
                time.sleep(rnd.uniform(0.05, 3.0))
            else:
                _wait_for(log, p, "serving on" if when == "serving" else "started writer0")
                time.sleep(rnd.uniform(0, 0.5 if when == "serving" else 1.0))
            phase = "serving" if _seen(log, "unlinked the names") else "starting"
            if p.poll() is not None:  # it must be killed, not have stopped: say why it stopped
                tail = log.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"cycle {i + 1}: the broker on port {port} exited by itself (code {p.returncode}) "
                                   "before its kill:\n" + "\n".join(tail))
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            _wait_group_gone(p.pid)
            left = shm_objects(instance)
            killed.append(instance)
            ph = phases[phase]
            ph[0] += 1
            ph[1] += len(left)
            ph[2] += _bytes(left)
            say(f"cycle {i + 1}/{cycles}: kill -9 while {phase}: {len(left)} objects ({_bytes(left) / 1e6:.1f} MB) "
                f"left by {instance}")
            shutil.rmtree(data, ignore_errors=True)
        before_final = sum(len(shm_objects(k)) for k in killed)
        # one more start: it reclaims what the last cycles left
        b = BrokerProcess(Path(tmp) / "final").start(timeout=120)
        b.stop()
        after = {k: shm_objects(k) for k in killed}
    left_total = sum(len(v) for v in after.values())
    return dict(cycles=cycles, killed_starting=phases["starting"][0], killed_serving=phases["serving"][0],
                left_after_kill_starting=phases["starting"][1], left_after_kill_serving=phases["serving"][1],
                bytes_after_kill_starting=phases["starting"][2], bytes_after_kill_serving=phases["serving"][2],
                left_before_final_start=before_final, left_at_end=left_total,
                left_at_end_names=sorted(n for v in after.values() for n in v))


def _wait_group_gone(pgid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
