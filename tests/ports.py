"""Ports for test servers that no other test, worker or kernel choice takes.

``bind(("127.0.0.1", 0))`` and closing hands out a port the kernel may hand
out again at once: to another pytest-xdist worker asking the same, or to any
outgoing connection (both come from the ephemeral range,
``/proc/sys/net/ipv4/ip_local_port_range``).  A broker started on it a moment
later then fails to bind, or two brokers share ``/dev/shm/hpb.p<port>.*``
and one unlinks the other's rings.  A broker also binds ports derived from
its client port (HTTP ``+80``, the text port ``+523``).

So tests take ports below the ephemeral range, each worker from its own
block, and claim each one with a lock file created ``O_EXCL`` in a directory
shared by every test process of this user, so two test sessions on one
machine (a developer's and CI's) do not collide either.  A claim older than
:data:`STALE_S` is taken over (its session is gone or long done with it).
The claims a process made are removed when it exits.

==============  =====================================================
ports           use
==============  =====================================================
10000..32767    test servers: worker k takes base ports from block k
                (:data:`BLOCK` wide): the first :data:`RUN` of every
                :data:`PERIOD`, so no base port is another's + 80 or
                + 523, and those stay inside the block
32768..60999    the kernel's ephemeral range (outgoing connections,
                ``bind(0)`` of brokers' own extra sockets): never used
==============  =====================================================
"""

from __future__ import annotations

import atexit
import os
import random
import socket
import time

FIRST = 10_000
BLOCK = 2_800  # eight workers fit below 32768
PERIOD, RUN = 700, 80  # bases lo+[0,80), lo+[700,780), ...: a broker binds its port + 80 and + 523
STALE_S = 3_600.0
CLAIMS = f"/tmp/hpbroker-test-ports-{os.getuid()}"

_claimed: list[str] = []
_next: int | None = None


def _worker_index() -> int:
    w = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw3"; absent outside xdist
    return int(w[2:]) if w.startswith("gw") and w[2:].isdigit() else 0


def _bases() -> list[int]:
    k = _worker_index() % ((32_768 - FIRST) // BLOCK)
    lo = FIRST + k * BLOCK
    return [lo + j + i for j in range(0, BLOCK - PERIOD + 1, PERIOD) for i in range(RUN)]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _claim(port: int) -> bool:
    path = os.path.join(CLAIMS, str(port))
    if path in _claimed:  # ours already: its last user has let it go (it binds)
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        try:
            if time.time() - os.stat(path).st_mtime < STALE_S:
                return False
            os.unlink(path)  # a stale claim: take it over
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError:
            return False
    _claimed.append(path)
    return True


def _release() -> None:
    for path in _claimed:
        try:
            os.unlink(path)
        except OSError:
            pass


atexit.register(_release)


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, with the ports a broker derives
    from it, and that no other test process will be handed."""
    global _next
    os.makedirs(CLAIMS, mode=0o700, exist_ok=True)
    bases = _bases()
    if _next is None:
        _next = random.Random(os.getpid()).randrange(len(bases))
    for _ in range(len(bases)):
        port = bases[_next]
        _next = (_next + 1) % len(bases)
        if _bindable(port) and all(_bindable(port + d) for d in (80, 523)) and _claim(port):
            return port
    raise RuntimeError(f"no free test port left in {bases[0]}..{bases[-1]} (claims in {CLAIMS})")
