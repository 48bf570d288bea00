"""The stats counters of the text listener processes, added up.

With ``text_protocol.processes`` > 1 each process serves its own
connections, so each counts its own puts, gets, connections... A ``stats``
is answered by one of them, which reads everyone's.  Each process keeps its
counters in a small file of int64s in the broker's run directory
(``text<lane>.counters``, mmap'd; the supervisor removes the directory at
stop), rewritten after each turn of its loop; a reader maps the files
read-only and adds them up.  A reader may see a turn half written: each
counter is still a value that process had.

=======  ====  =========================================================
offset   size  field
=======  ====  =========================================================
8 * i    8     counter ``names[i]``, int64, native byte order
=======  ====  =========================================================
"""

from __future__ import annotations

import mmap
import os

import numpy as np


def path_of(run_dir: str, lane: int) -> str:
    return os.path.join(run_dir, f"text{lane}.counters")


class SharedCounters:
    def __init__(self, path: str, names: list[str]):
        self.names = list(names)
        size = 8 * len(self.names)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.values = np.frombuffer(self._mm, dtype=np.int64)

    def publish(self, values: list[int]) -> None:
        """``values`` in the order of ``names``."""
        self.values[:] = values

    def close(self) -> None:
        del self.values
        self._mm.close()


def read_sum(paths: list[str], names: list[str]) -> dict[str, int]:
    """The counters of every file in ``paths`` that exists, added up."""
    total = np.zeros(len(names), dtype=np.int64)
    for p in paths:
        try:
            with open(p, "rb") as f:
                data = f.read(8 * len(names))
        except FileNotFoundError:
            continue
        if len(data) == 8 * len(names):
            total += np.frombuffer(data, dtype=np.int64)
    return dict(zip(names, total.tolist()))
