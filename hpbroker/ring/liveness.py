"""Is a process alive?  Pid plus start time, so a recycled pid is not mistaken for the peer.

Linux: ``/proc/<pid>/stat`` field 22 (start time in clock ticks since boot)
identifies one incarnation of a pid; a zombie (state Z or X, killed but not
yet reaped by its parent) counts as dead.  Elsewhere: ``kill(pid, 0)``.
"""

from __future__ import annotations

import os
import time

__all__ = ["start_time", "is_alive", "now_ns", "heartbeat_age_ns"]

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the host


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return []
    # "pid (comm) state ..." - comm may contain spaces and parentheses
    rest = raw[raw.rfind(b")") + 2 :].decode("ascii", "replace")
    return rest.split()  # rest[0] = state (field 3), rest[19] = starttime (field 22)


def start_time(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot (0 if unknown)."""
    f = _stat_fields(pid)
    if not f or len(f) < 20:
        return 0
    return int(f[19])


def is_alive(pid: int, start: int = 0) -> bool:
    """True if ``pid`` runs (not a zombie) and, if ``start`` is given, is the same incarnation."""
    if pid <= 0:
        return False
    f = _stat_fields(pid)
    if f is None:
        return False
    if not f:  # /proc unreadable: fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if f[0] in ("Z", "X", "x"):
        return False
    return not (start and len(f) >= 20 and int(f[19]) != start)


def heartbeat_age_ns(stamp_ns: int) -> int:
    """How long ago a heartbeat stamp was written (large if never)."""
    return now_ns() - stamp_ns if stamp_ns else 1 << 62
