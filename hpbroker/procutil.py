"""Process plumbing shared by the broker's child processes."""

from __future__ import annotations

import ctypes
import os
import signal

import setproctitle

_PR_SET_PDEATHSIG = 1


def run_child(role: str, instance: str, target, *args):
    """Process target for the supervisor's children: name the process after
    its role, then run ``target(*args)``.

    ``ps``/``top -c`` show ``hpbroker: writer0 (p9092)`` instead of a
    ``python -c "from multiprocessing.spawn ..."`` line per child, and
    ``/proc/PID/comm`` (``top``, ``ps -o comm``, ``pgrep``; 15 bytes) holds
    ``hpb-writer0``: what an operator needs to pin a process to a core or
    read its CPU share.  Its last log lines go to its slot of the stats
    block too (the dashboard shows them)."""
    from hpbroker import stats

    name_process(f"hpbroker: {role} ({instance})", f"hpb-{role}")
    stats.capture_logs(stats.process_slot(instance, role))
    return target(*args)


def name_process(title: str, comm: str) -> None:
    """Set this process's title (``ps``, ``/proc/PID/cmdline``) and its
    comm (``top``, ``pgrep``; cut to 15 bytes)."""
    setproctitle.setproctitle(title)
    setproctitle.setthreadtitle(comm[:15])


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


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20) -> bool:
    """glibc: serve allocations below ``mmap_threshold`` (at most 32 MiB) from
    the heap and keep up to four times that free there before trimming.

    By default glibc gives every allocation over 128 KiB fresh mmap'd pages
    and unmaps them on free, so each 1 MiB buffer (a ZeroMQ message, an
    encoded batch) is faulted in page by page: 1.1 ms per MiB on this VM
    against 0.06 ms from the heap.  Returns False where mallopt is missing
    (not glibc) or refused the value."""
    if mmap_threshold <= 0:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return mallopt(_M_TRIM_THRESHOLD, int(mmap_threshold) * 4) == 1 and ok


def tune_runtime(mmap_threshold: int, switch_interval_us: int) -> None:
    """The process-wide settings of ``[broker]`` (see docs/config.md)."""
    import sys

    tune_malloc(mmap_threshold)
    if switch_interval_us > 0:
        sys.setswitchinterval(switch_interval_us / 1e6)


def freeze_heap() -> None:
    """Call once startup is done: move every object alive now (modules,
    classes, config) out of the cyclic GC's reach.  A full collection of a
    process with numpy and zmq imported walks ~30 k objects and stalls it
    4-6 ms on this VM; after the freeze it costs microseconds, and only the
    objects made while serving are scanned."""
    import gc

    gc.collect()
    gc.freeze()


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
    tune_runtime(cfg.broker.malloc_mmap_threshold_bytes, cfg.broker.gil_switch_interval_us)
    return cfg
