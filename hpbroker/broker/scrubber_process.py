"""The scrubber process: :class:`hpbroker.io.scrub.Scrubber` at low priority.

Spawned by the supervisor when ``scrub.enabled``.  Why a process of its own
and not a thread of each writer: a thread would share the writer's GIL, and
a thread made low-priority (nice) while holding the GIL would stall the
writer's loop behind it (a priority inversion); and a writer's loop must
never wait for a scan of a 1 GiB segment.  As its own process it can drop
to CPU nice 19 and the idle I/O class, read every writer's partitions, and
cost the data path only what its rate allows (measured in
docs/reliability.md, "The scrubber").

It only reads segments, and writes two kinds of small files: its progress
(``<data_dir>/scrub-state.json``) and, for a damaged batch,
``<partition>/scrub-finding``, which the partition's writer turns into a
fence.  SIGTERM stops it at its next read or wait.  A failure is logged and
the scrub starts again a minute later: it never stops the broker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import signal
import threading

from hpbroker.io.scrub import Scrubber
from hpbroker.procutil import child_setup, freeze_heap

log = logging.getLogger("hpbroker.scrub")

_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13


def lower_priority() -> None:
    """CPU nice 19 and the idle I/O class (honoured by the BFQ and CFQ
    schedulers; others ignore it, and the rate limit holds anyway)."""
    try:
        os.nice(19 - os.nice(0))
    except OSError as e:
        log.warning("could not lower the scrubber's CPU priority: %s", e)
    nr = _IOPRIO_SET.get(platform.machine())
    if nr is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(nr, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT) != 0:
            log.info("ioprio_set: %s (the scrubber keeps the default I/O class)", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError):
        pass


def main(cfg_bytes: bytes) -> None:
    cfg = child_setup("scrubber", cfg_bytes, None)
    lower_priority()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    s = cfg.scrub
    freeze_heap()
    log.info("scrubbing closed segments at %d bytes/s, a pass at most every %d s", s.rate_bytes,
             s.pass_interval_ms // 1000)
    while not stop.is_set():
        try:
            Scrubber(cfg.broker.data_dir, s.rate_bytes, s.pass_interval_ms / 1000.0, direct=cfg.log.direct_io,
                     stop=stop).run()
        except Exception:  # noqa: BLE001 - the scrub is a background check: log it, try again later
            log.exception("the scrubber failed; it starts again in 60 s")
            stop.wait(60)
