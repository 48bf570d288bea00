"""The fencing lease: until when a cluster-mode master may acknowledge.

The supervisor's ZooKeeper agent (hpbroker/cluster/broker_agent.py) renews
it each time ZooKeeper answers it and it still holds the replica set's
epoch; the acceptors read it before they take a produce request and before
they send a successful produce reply.  The deadline is CLOCK_MONOTONIC
seconds, a clock every process of the host shares and that goes on
counting while a process is stopped: a broker continued after SIGSTOP finds
its lease run out before it sends anything (docs/cluster.md, "Fencing").

One file of 16 bytes in the broker's run directory, mapped by every reader:

======  ======  =====  ===============================================
offset  size    type   field
======  ======  =====  ===============================================
0       8       f64    deadline: CLOCK_MONOTONIC seconds (0: fenced)
8       8       f64    renewed: CLOCK_MONOTONIC seconds of the newest renewal
======  ======  =====  ===============================================

A standalone broker (no cluster.zookeeper) has no file and never checks.
An aligned 8-byte store is atomic on the CPUs we run on; each field has one
writer (the agent's thread), so no lock is needed.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

SIZE = 16
_F = struct.Struct("<dd")


def path_of(run_dir: str | Path) -> Path:
    return Path(run_dir) / "lease"


class Lease:
    def __init__(self, mm: mmap.mmap, clock=time.monotonic):
        self._mm = mm
        self.clock = clock

    @classmethod
    def create(cls, path: str | Path) -> "Lease":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            return cls(mmap.mmap(fd, SIZE))
        finally:
            os.close(fd)

    @classmethod
    def open(cls, path: str | Path) -> "Lease":
        fd = os.open(path, os.O_RDONLY)
        try:
            return cls(mmap.mmap(fd, SIZE, prot=mmap.PROT_READ))
        finally:
            os.close(fd)

    def renew(self, until: float) -> None:
        """Valid until ``until`` (monotonic seconds)."""
        self._mm[0:SIZE] = _F.pack(until, self.clock())

    def revoke(self) -> None:
        self._mm[0:SIZE] = _F.pack(0.0, self.clock())

    @property
    def deadline(self) -> float:
        return _F.unpack_from(self._mm, 0)[0]

    def valid(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) < self.deadline

    def close(self) -> None:
        self._mm.close()
