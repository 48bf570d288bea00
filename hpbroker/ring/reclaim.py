"""Finding ring segments, and removing what killed owners left behind.

Where a segment can be
----------------------

==========================================  ===========================================
state                                       found by
==========================================  ===========================================
named: being created, or its owner never    ``/dev/shm/hpb.<instance>.<ring>``
unlinked it (killed before every process    (:func:`list_segments`)
was attached, or an older release)
unlinked while running (a broker unlinks    ``/proc/<pid>/fd/<n>`` of its owner, which
the names once all its processes have the   keeps the fd open: ``/dev/shm/hpb.<instance>.
rings mapped)                               <ring> (deleted)`` (``include_unlinked``)
==========================================  ===========================================

What removes leftovers
----------------------

* :func:`cleanup_stale` (a broker at start, for its own instance): every
  segment whose owner is dead, by pid and start time *or* by heartbeat
  age, and every semaphore of the instance that no surviving segment names.
* :func:`reclaim_dead` (a broker at start, for every other instance): only
  segments whose owner's pid is gone (or reused: the start time differs),
  with the two semaphores each names; a stopped (SIGSTOP) owner whose
  heartbeat is old is someone else's to judge.  A segment with no valid
  header yet is left alone for ``grace_s`` (it may be being created now).

Reading a header here never writes, takes a semaphore or waits.
"""

from __future__ import annotations

import mmap
import os
import re
import time

from hpbroker.ring import layout as L
from hpbroker.ring.liveness import is_alive, now_ns
from hpbroker.ring.ring import header_snapshot
from hpbroker.ring.shm import PREFIX, SHM_DIR, _check, _unlink_sem, _unlink_shm, bell_name, space_name

__all__ = ["list_segments", "is_stale", "cleanup_stale", "reclaim_dead"]

_DELETED = re.compile(r"^/dev/shm/(hpb\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+) \(deleted\)$")


def _split(fname: str):
    """``hpb.<instance>.<ring>`` -> (instance, ring); None for anything else."""
    parts = fname.split(".")
    if len(parts) == 3 and parts[0] == PREFIX:
        return parts[1], parts[2]
    return None


def _read_header(path: str) -> tuple[dict, int, int]:
    """-> (header_snapshot or {"valid": False}, size, mtime in ns) of the segment at ``path``."""
    info, size, mtime = {"valid": False}, 0, 0
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            size, mtime = st.st_size, st.st_mtime_ns
            if size >= L.HEADER_BYTES:
                with mmap.mmap(fd, L.HEADER_BYTES, access=mmap.ACCESS_READ) as mm:
                    info = header_snapshot(mm)
        finally:
            os.close(fd)
    except OSError:
        pass
    return info, size, mtime


def _unlinked_paths() -> dict[tuple[int, int], tuple[str, str]]:
    """Every unlinked ``hpb.*`` segment some process has open: {(dev, inode): (name, /proc path)}."""
    out = {}
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return out
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            path = f"{fd_dir}/{fd}"
            try:
                m = _DELETED.match(os.readlink(path))
                if m is None:
                    continue
                st = os.stat(path)
            except OSError:
                continue
            out.setdefault((st.st_dev, st.st_ino), (m.group(1), path))
    return out


def list_segments(instance: str | None = None, shm_dir: str = SHM_DIR, include_unlinked: bool = False) -> list[dict]:
    """Every ``hpb.*`` ring segment (optionally of one instance), decoded read-only.

    Each dict is :func:`header_snapshot` plus ``instance``, ``ring``,
    ``path``, ``size``, ``mtime_ns`` and ``unlinked``; segments that cannot
    be read have ``valid`` False.  ``include_unlinked`` adds the segments of
    running brokers, whose names are gone (found through their owner's
    open fd in /proc).
    """
    found = []
    try:
        names = sorted(os.listdir(shm_dir))
    except FileNotFoundError:
        names = []
    for fname in names:
        parsed = _split(fname)
        if parsed is not None:
            found.append((parsed, os.path.join(shm_dir, fname), False))
    if include_unlinked:
        for name, path in sorted(_unlinked_paths().values()):
            found.append((_split(name), path, True))
    out = []
    for parsed, path, unlinked in found:
        if parsed is None or (instance is not None and parsed[0] != instance):
            continue
        info, size, mtime = _read_header(path)
        info.update(instance=parsed[0], ring=parsed[1], path=path, size=size, mtime_ns=mtime, unlinked=unlinked)
        out.append(info)
    return out


def is_stale(info: dict, dead_after_ms: int = 1000) -> bool:
    """A segment whose owner is gone (pid dead, or heartbeat older than ``dead_after_ms``)."""
    if not info.get("valid"):
        return True
    if not is_alive(info["owner_pid"], info["owner_start"]):
        return True
    return now_ns() - info["owner_heartbeat"] > dead_after_ms * 1_000_000


def cleanup_stale(instance: str, *, dead_after_ms: int = 1000, shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink the segments of ``instance`` whose owner is dead, and every semaphore
    of ``instance`` no surviving segment refers to.  Returns the names removed.

    Call it at broker start, for the broker's own instance, before creating
    its rings: a segment whose header is not yet valid (being created right
    now by someone else) also counts as stale.
    """
    _check("instance", instance)
    removed, keep = [], set()
    for info in list_segments(instance, shm_dir):
        name = f"/{PREFIX}.{instance}.{info['ring']}"
        if is_stale(info, dead_after_ms):
            if _unlink_shm(name):
                removed.append(name)
        else:
            keep.add(space_name(instance, info["ring"]))
            keep.add(bell_name(instance, info.get("doorbell") or info["ring"]))
    prefix = f"sem.{PREFIX}.{instance}."
    try:
        names = sorted(os.listdir(shm_dir))
    except FileNotFoundError:
        names = []
    for fname in names:
        if fname.startswith(prefix):
            name = "/" + fname[len("sem.") :]
            if name not in keep and _unlink_sem(name):
                removed.append(name)
    return removed


def reclaim_dead(*, skip: str | None = None, grace_s: float = 60.0, shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink the segments of every instance (but ``skip``) whose owner
    process is gone, each with its "space" semaphore and the doorbell it
    names, and segments with no valid header older than ``grace_s``.
    Returns the names removed.  A broker runs it at start, so what one
    killed while it started (before its names were unlinked) does not stay
    in /dev/shm until that port is used again."""
    removed = []
    for info in list_segments(None, shm_dir):
        instance, ring = info["instance"], info["ring"]
        if instance == skip:
            continue
        try:
            name = f"/{PREFIX}.{_check('instance', instance)}.{_check('ring', ring)}"
        except ValueError:
            continue
        if info.get("valid"):
            if is_alive(info["owner_pid"], info["owner_start"]):
                continue
            bell = info.get("doorbell") or ring
            for sem in (space_name(instance, ring), bell_name(instance, bell) if _valid(bell) else None):
                if sem is not None and _unlink_sem(sem):
                    removed.append(sem)
        elif time.time_ns() - info["mtime_ns"] < grace_s * 1e9:
            continue
        if _unlink_shm(name):
            removed.append(name)
    return removed


def _valid(name: str) -> bool:
    try:
        _check("doorbell", name)
        return True
    except ValueError:
        return False
