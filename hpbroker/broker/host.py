"""What a broker takes from its host before any child starts: its data
directory's lock, its ports, and the shared-memory rings.

Names of the shared-memory objects (``/hpb.<instance>.<name>``):

=====================  =================================================
name                   what
=====================  =================================================
``a<A>w<W>``           ring from acceptor A to writer W
``rw<W>``              ring from a slave's replicator to writer W
``w<W>``               writer W's doorbell semaphore, shared by its rings
=====================  =================================================
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from hpbroker import config as config_mod
from hpbroker.broker import layout
from hpbroker.ring import Doorbell, SharedRing


class StartupError(RuntimeError):
    """The broker could not start; the message says why, in one line."""


def ring_name(a: int, w: int) -> str:
    return layout.ring_name(a, w)


def replica_ring_name(w: int) -> str:
    return f"rw{w}"


def doorbell_name(w: int) -> str:
    return f"w{w}"


def lock_data_dir(data_dir: Path) -> int:
    """flock ``data_dir/.lock`` (two brokers never share a data directory); -> the fd, held for the broker's life."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner-only, as every file in it (docs/security.md)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"data directory {data_dir} is in use by another broker") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_instance(instance: str) -> socket.socket:
    """Bind the abstract unix socket ``@hpbroker.<instance>``: one broker per
    instance name on this machine, since the instance names its shared
    memory (two brokers of one name would unlink each other's rings at
    start).  The kernel frees the name when the socket's last holder dies,
    so a killed broker never blocks its restart.  -> the socket, held for
    the broker's life."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"\0hpbroker.{instance}")
    except OSError:
        s.close()
        raise StartupError(f"broker instance {instance!r} is already running on this machine (its shared memory "
                           "names would collide): choose another broker.port or broker.instance") from None
    return s


def check_port(bind: str, port: int) -> None:
    """Fail now, with one line, when ``bind:port`` cannot be listened on."""
    s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, port))
    except OSError as e:
        raise StartupError(f"cannot listen on {bind}:{port}: {e.strerror}") from None
    finally:
        s.close()


def create_rings(instance: str, plan, cfg: config_mod.Config, *, replicated: bool) -> list:
    """One SPSC ring per (acceptor, writer), and per writer a replicator ring
    when ``replicated``; a writer's rings share its doorbell.  Each ring's
    pages are first touched (zeroed) while this process runs on the writer's
    NUMA node, so they are allocated there.  -> every object made (the
    caller unlinks their names once every process has them open, and at
    stop)."""
    b, r = cfg.broker, cfg.ring
    made: list = []
    generation = time.time_ns() & 0x7FFF_FFFF
    for a, w, node in plan.rings:
        cpus = plan.nodes.get(node) if node is not None and len(plan.nodes) > 1 else None
        with layout.running_on(cpus):
            made.append(SharedRing.create(instance, ring_name(a, w), r.capacity_bytes, doorbell=doorbell_name(w),
                                          generation=generation, heartbeat_ms=r.heartbeat_ms))
    if replicated:  # the replicator -> writer rings a slave appends through
        for w in range(b.writers):
            made.append(SharedRing.create(instance, replica_ring_name(w), r.capacity_bytes, doorbell=doorbell_name(w),
                                          generation=generation, heartbeat_ms=r.heartbeat_ms))
    # after the rings: every semaphore of the instance is then named in a
    # segment's header, where a reclaimer finds it (hpbroker.ring.reclaim)
    made += [Doorbell(instance, doorbell_name(w)) for w in range(b.writers)]
    return made
