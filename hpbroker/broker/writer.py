"""The disk-writer process: rings in, appends and group commits, completions out.

A writer owns the partitions hashed to it (see
:func:`hpbroker.net.acceptor.owner_of`) and is the only process that writes
their files.  Its loop:

1. drain every input ring (one per acceptor); each record is one produce
   request: append its batches (stamping offsets) and remember the token;
2. when the group-commit policy says so, or when the rings ran dry, flush:
   fdatasync every dirty partition (``durable`` mode);
3. tell each acceptor which of its tokens are now durable, at which base
   offsets, plus every changed high watermark;
4. sleep on the writer's doorbell semaphore until an acceptor rings or the
   next flush deadline comes.

A failed write or fsync fails every request waiting on that partition and
leaves the partition fenced; nothing is retried and then acknowledged.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict

import zmq

from hpbroker import config as config_mod
from hpbroker.io import GroupCommit, Storage
from hpbroker.net import control, handoff
from hpbroker.net.rings import PeerDead, RingConsumer
from hpbroker.protocol.errors import ErrorCode

log = logging.getLogger("hpbroker.writer")

STATE_EVERY_S = 1.0  # full watermark broadcast, so late or restarted acceptors catch up


class Writer:
    def __init__(self, index: int, cfg: config_mod.Config, storage: Storage, committer: GroupCommit,
                 rings: list[RingConsumer], pushes: list[zmq.Socket], epoch: int = 0, clock=time.monotonic):
        self.index = index
        self.cfg = cfg
        self.storage = storage
        self.gc = committer
        self.rings = rings
        self.pushes = pushes
        self.epoch = epoch
        self.clock = clock
        self.stopping = False
        # per acceptor: [(token, log, base_offsets, last_offset)] waiting for durability
        self.waiting: list[list[tuple[int, object, list[int], int]]] = [[] for _ in rings]
        self.failed: list[list[tuple[int, int, str, list[int]]]] = [[] for _ in rings]
        self._dirty_hwm: set = set()

    # -- one record = one produce request ------------------------------------------

    def _on_record(self, acceptor: int, type_id: int, buf: memoryview) -> None:
        token, topic, partition, count, pos = handoff.read_record(buf)
        try:
            plog = self.storage.partition(topic, partition, create=True)
            offsets = []
            last = -1
            for _ in range(count):
                n = int.from_bytes(buf[pos + 8 : pos + 12], "little")
                base, last = self.gc.append(plog, buf[pos : pos + n], self.epoch)
                offsets.append(base)
                pos += n
        except Exception as e:  # fenced partition, ENOSPC, bad record: fail this request only
            code = ErrorCode.PARTITION_FENCED if isinstance(e, OSError) or "fenced" in type(e).__name__.lower() else ErrorCode.INTERNAL
            self.failed[acceptor].append((token, int(code), f"{topic}/{partition}: {e}", []))
            return
        self.waiting[acceptor].append((token, plog, offsets, last))

    def drain(self) -> int:
        got = 0
        for a, ring in enumerate(self.rings):
            got += ring.drain(lambda t, b, a=a: self._on_record(a, t, b))
        return got

    # -- commit and tell --------------------------------------------------------------

    def commit(self) -> None:
        results = self.gc.flush()  # {log: durable offset or exception}
        for plog in results:
            self._dirty_hwm.add(plog)
        hwm, start = self._watermarks(self._dirty_hwm)
        self._dirty_hwm.clear()
        for a, waiting in enumerate(self.waiting):
            done = self.failed[a]
            still = []
            for token, plog, offsets, last in waiting:
                r = results.get(plog, None)
                if isinstance(r, BaseException):
                    done.append((token, int(ErrorCode.PARTITION_FENCED), f"{plog.name}: {r}", []))
                elif plog.fenced is not None:
                    done.append((token, int(ErrorCode.PARTITION_FENCED), f"{plog.name}: {plog.fenced}", []))
                elif plog.high_watermark > last:
                    done.append((token, 0, "", offsets))
                else:
                    still.append((token, plog, offsets, last))
            self.waiting[a] = still
            if done or hwm:
                self._send(a, handoff.Completions(v=1, writer=self.index, done=done, hwm=hwm, log_start=start))
            self.failed[a] = []

    def pending(self) -> bool:
        return any(self.waiting) or any(self.failed)

    def broadcast_state(self) -> None:
        hwm, start = self._watermarks(self.storage.partitions())
        for a in range(len(self.pushes)):
            self._send(a, handoff.Completions(v=1, writer=self.index, done=[], hwm=hwm, log_start=start))

    def _watermarks(self, logs) -> tuple[dict[str, int], dict[str, int]]:
        hwm, start = {}, {}
        for plog in logs:
            key = handoff.tp_key(plog.topic, plog.partition)
            hwm[key] = plog.high_watermark
            start[key] = plog.earliest_offset
        return hwm, start

    def _send(self, acceptor: int, c: handoff.Completions) -> None:
        self.pushes[acceptor].send(handoff.completions_encoder.encode(c), copy=False)

    # -- loop -------------------------------------------------------------------------------

    def run(self, wait) -> None:
        """``wait(timeout_s)`` sleeps until an acceptor rings the doorbell."""
        next_state = self.clock()
        while True:
            got = self.drain()
            now = self.clock()
            if got == 0 or self.gc.due(now):
                if self.pending() or self.gc.has_pending():
                    self.commit()
            if got == 0:
                if self.stopping:
                    break
                if now >= next_state:
                    self.broadcast_state()
                    next_state = now + STATE_EVERY_S
                deadline = self.gc.deadline()
                timeout = 0.1 if deadline is None else max(0.0, min(0.1, deadline - now))
                wait(timeout)
        self.commit()


def main(index: int, cfg_toml: bytes, ring_names: list[str], doorbell: str, push_eps: list[str],
         control_ep: str, cpus: list[int] | None) -> None:
    """Entry point of a writer process (spawned by the supervisor)."""
    from hpbroker.broker.layout import pin
    from hpbroker.net.rings import Doorbell

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = config_mod.loads(cfg_toml)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s writer{index} %(levelname)s %(message)s")
    pin(cpus)
    ctx = zmq.Context()
    pushes = []
    for ep in push_eps:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.SNDHWM, 0)  # completions are bounded by the acceptors' pending limit
        s.connect(ep)
        pushes.append(s)
    bell = Doorbell.attach(doorbell)
    rings = [RingConsumer.attach(name, cfg.ring, bell) for name in ring_names]
    storage = Storage(cfg.broker.data_dir, cfg.log, owns=lambda topic, partition: True)
    committer = GroupCommit(storage, cfg.log)
    w = Writer(index, cfg, storage, committer, rings, pushes)

    def on_term(signum, frame):
        w.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    ctl = ctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 1000)
    ctl.connect(control_ep)
    try:
        w.broadcast_state()
        ctl.send(control.encoder.encode(control.WriterReady(writer=index, pid=os.getpid())))
        w.run(lambda timeout: bell.wait(timeout))
    except PeerDead as e:
        log.error("an acceptor died (%s); stopping", e)
        raise SystemExit(3)
    finally:
        storage.close()
        for r in rings:
            r.close()
        bell.close()
        ctx.destroy(linger=1000)
