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

from hpbroker import batch
from hpbroker import config as config_mod
from hpbroker.io import GroupCommit, PartitionFenced, Storage, StorageError
from hpbroker.net import control, handoff
from hpbroker.protocol.errors import ErrorCode
from hpbroker.ring import Doorbell, PeerDead, ReaderGroup, RingClosed, SharedRing

log = logging.getLogger("hpbroker.writer")

STATE_EVERY_S = 1.0  # full watermark broadcast, so late or restarted acceptors catch up


class _Request:
    """One produce request: done when every batch's ticket resolved."""

    __slots__ = ("acceptor", "token", "offsets", "remaining", "closed", "error")

    def __init__(self, acceptor: int, token: int, count: int):
        self.acceptor = acceptor
        self.token = token
        self.offsets = [-1] * count
        self.remaining = 0
        self.closed = False
        self.error: tuple[int, str] | None = None


def _error_code(e: BaseException) -> int:
    if isinstance(e, StorageError):
        return int(ErrorCode.PARTITION_FENCED)
    return int(ErrorCode.INTERNAL)


class Writer:
    def __init__(self, index: int, storage: Storage, committer: GroupCommit, group: ReaderGroup,
                 pushes: list, *, epoch: int = 0, retention_check_s: float = 60.0, clock=time.monotonic):
        self.index = index
        self.storage = storage
        self.gc = committer
        self.group = group
        self.pushes = pushes
        self.epoch = epoch
        self.clock = clock
        self.stopping = False
        self.retention_check_s = retention_check_s
        self.done: list[list[tuple[int, int, str, list[int]]]] = [[] for _ in pushes]
        # reader -> its record handler (which knows the acceptor it comes from)
        self.handlers = {r: (lambda t, b, a=a: self.on_record(a, t, b)) for a, r in enumerate(group.readers)}
        self.moved: set = set()  # logs whose watermarks changed since the last report

    # -- one ring record = one produce request -------------------------------------------

    def on_record(self, acceptor: int, type_id: int, buf: memoryview) -> None:
        token, topic, partition, count, pos = handoff.read_record(buf)
        req = _Request(acceptor, token, count)
        try:
            plog = self.storage.partition(topic, partition, create=True)
            for i in range(count):
                n = batch.peek_length(buf, pos)
                req.remaining += 1
                self.gc.append(plog, buf[pos : pos + n], self.epoch, callback=self._ticket(req, i))
                pos += n
            self.moved.add(plog)
        except Exception as e:  # fenced partition, disk full, unreadable directory: fail this request only
            if not isinstance(e, StorageError):
                log.exception("appending to %s/%d failed", topic, partition)
            req.remaining -= 1  # the batch that raised holds no ticket
            if req.error is None:
                req.error = (_error_code(e), f"{topic}/{partition}: {e}")
        req.closed = True
        self._maybe_done(req)

    def _ticket(self, req: _Request, i: int):
        def resolved(err, base, last):
            req.remaining -= 1
            if err is not None:
                if req.error is None:
                    req.error = (_error_code(err), str(err))
            else:
                req.offsets[i] = base
            self._maybe_done(req)

        return resolved

    def _maybe_done(self, req: _Request) -> None:
        if req.closed and req.remaining == 0:
            if req.error is None:
                self.done[req.acceptor].append((req.token, 0, "", req.offsets))
            else:
                self.done[req.acceptor].append((req.token, req.error[0], req.error[1], []))

    # -- commit and tell --------------------------------------------------------------------

    def commit(self) -> None:
        results = self.gc.flush()
        for key, r in results.items():
            if isinstance(r, PartitionFenced):
                log.error("partition %s/%d fenced: %s", key[0], key[1], r)
        self.report()

    def report(self, logs=None) -> None:
        """Send each acceptor its finished requests and the moved watermarks."""
        hwm, start = self._watermarks(self.moved if logs is None else logs)
        self.moved = set()
        for a, push in enumerate(self.pushes):
            done, self.done[a] = self.done[a], []
            if done or hwm or logs is not None:
                msg = handoff.Completions(v=1, writer=self.index, done=done, hwm=hwm, log_start=start)
                push.send(handoff.completions_encoder.encode(msg), copy=False)

    @staticmethod
    def _watermarks(logs) -> tuple[dict[str, int], dict[str, int]]:
        hwm, start = {}, {}
        for plog in logs:
            topic, partition = plog.key
            key = handoff.tp_key(topic, partition)
            hwm[key] = plog.high_watermark
            start[key] = plog.earliest_offset
        return hwm, start

    # -- loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        now = self.clock()
        next_state = now
        next_retention = now + self.retention_check_s
        while True:
            got = 0
            for r in self.group.readers:
                got += r.drain(self.handlers[r])
            now = self.clock()
            if self.gc.pending_batches and (got == 0 or self.gc.due(now)):
                self.commit()
            elif any(self.done):
                self.report()
            if got:
                continue
            if self.stopping:
                break
            if now >= next_state:
                self.report(self.storage.logs())
                next_state = now + STATE_EVERY_S
            if now >= next_retention:
                if self.storage.apply_retention():
                    self.report(self.storage.logs())
                next_retention = now + self.retention_check_s
            deadline = self.gc.deadline()
            timeout = 0.1 if deadline is None else max(0.0, min(0.1, deadline - now))
            self._wait(timeout)
        self.gc.sync_all()
        self.report()

    def _wait(self, timeout: float) -> None:
        if not self.group.readers:
            time.sleep(timeout)
            return
        try:
            self.group.wait(timeout)
        except (PeerDead, RingClosed) as e:
            reader = getattr(e, "reader", None)
            if isinstance(e, PeerDead):
                log.error("acceptor ring producer died: %s", e)
            if reader is not None:
                self.group.remove(reader)


def recover_owned(storage: Storage, index: int, writers: int) -> None:
    """Open (and so recover) every partition on disk that this writer owns."""
    for topic, partition in storage.partitions():
        if handoff.owner_of(topic, partition, writers) == index:
            plog = storage.partition(topic, partition)
            if plog.fenced is not None:
                log.error("partition %s/%d is fenced: %s", topic, partition, plog.fenced)


def main(index: int, cfg_bytes: bytes, instance: str, ring_names: list[str], doorbell: str, push_eps: list[str],
         control_ep: str, cpus: list[int] | None) -> None:
    """Entry point of a writer process (spawned by the supervisor)."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor coordinates shutdown
    cfg = config_mod.loads(cfg_bytes)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s writer{index} %(levelname)s %(message)s")
    if cpus:
        psutil.Process().cpu_affinity(cpus)
    ctx = zmq.Context()
    pushes = []
    for ep in push_eps:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.SNDHWM, 0)  # bounded by the acceptors' max_pending_requests
        s.connect(ep)
        pushes.append(s)
    r = cfg.ring
    bell = Doorbell(instance, doorbell)
    shared = [SharedRing.attach(instance, name, heartbeat_ms=r.heartbeat_ms) for name in ring_names]
    readers = [s.reader(spin_us=r.spin_us, dead_after_ms=r.dead_after_ms) for s in shared]
    group = ReaderGroup(readers, bell.signal, spin_us=r.spin_us)
    storage = Storage(cfg.broker.data_dir, cfg.log)
    w = Writer(index, storage, GroupCommit(cfg.log), group, pushes,
               retention_check_s=cfg.log.retention_check_ms / 1000.0)

    def on_term(signum, frame):
        w.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    ctl = ctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 1000)
    ctl.connect(control_ep)
    try:
        recover_owned(storage, index, cfg.broker.writers)
        w.report(storage.logs())
        ctl.send(control.encoder.encode(control.WriterReady(writer=index, pid=os.getpid())))
        w.run()
    finally:
        try:
            storage.close()
        finally:
            for s in shared:
                s.close()
            bell.close()
            ctx.destroy(linger=1000)
