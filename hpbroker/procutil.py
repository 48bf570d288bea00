"""Process plumbing shared by the broker's child processes."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent (the
    supervisor) dies, so a supervisor killed with SIGKILL never leaves
    acceptors, writers or a replicator running on their own.  SIGTERM lets
    them drain and exit cleanly; the next start cleans up the rest."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent or parent == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def child_setup(name: str, cfg_bytes: bytes, cpus: list[int] | None):
    """What every broker child does first: leave SIGINT to the supervisor
    (it coordinates shutdown), die with it, decode the config it passed,
    log under its own name, and pin itself to its CPUs.  Returns the Config."""
    import logging

    import psutil

    from hpbroker import config as config_mod

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    cfg = config_mod.loads(cfg_bytes)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    if cpus:
        psutil.Process().cpu_affinity(cpus)
    return cfg
