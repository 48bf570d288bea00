"""The writer process: sockets, rings and storage for one :class:`DiskWriter`, then its loop.

Spawned by the supervisor, one per ``broker.writers``.  It makes every
socket (:func:`hpbroker.sockets.make_socket`), attaches its input rings,
recovers the partitions it owns, tells the supervisor it is ready, and runs
the loop until SIGTERM.  SIGUSR2 promotes a slave's writer: its round
publisher is built then, with a PUB socket bound and announced to the
supervisor at that moment (a slave holds no port it does not serve).
"""

from __future__ import annotations

import logging
import os
import signal
from functools import partial

import zmq

from hpbroker.config import Config
from hpbroker.io import GroupCommit, Storage
from hpbroker.ipc import control, handoff
from hpbroker.procutil import child_setup, freeze_heap
from hpbroker.ring import Doorbell, ReaderGroup, SharedRing
from hpbroker.security import REPLICATION, BrokerSecurity
from hpbroker.sockets import make_socket
from hpbroker import stats

from hpbroker.broker.completion_reporter import CompletionReporter
from hpbroker.broker.disk_writer import DiskWriter, FlushWakeup
from hpbroker.broker.round_publisher import RoundPublisher
from hpbroker.broker.writer_stats import TimedFileSystem, WriterStats

log = logging.getLogger("hpbroker.writer")


def recover_owned(storage: Storage, index: int, writers: int) -> None:
    """Open (and so recover) every partition on disk that this writer owns."""
    for topic, partition in storage.partitions():
        if handoff.owner_of(topic, partition, writers) == index:
            plog = storage.partition(topic, partition)
            if plog.fenced is not None:
                log.error("partition %s/%d is fenced: %s", topic, partition, plog.fenced)


def main(index: int, cfg_bytes: bytes, instance: str, ring_names: list[str], doorbell: str, push_eps: list[str],
         control_ep: str, cpus: list[int] | None, replicator_feed_ep: str | None = None, master: bool = False,
         pub_bind: str | None = None) -> None:
    """Entry point of a writer process.  ``push_eps``: one completions
    endpoint per ring in ``ring_names`` (the acceptors', then a replicated
    broker's replicator's); ``replicator_feed_ep``: the replicator's, on a replicated
    broker; ``master``: publish rounds from the start; ``pub_bind``: where."""
    cfg = child_setup(f"writer{index}", cfg_bytes, cpus)
    ctx = zmq.Context()
    sec = BrokerSecurity(cfg.security, ctx)  # [security]: the PUB socket is a CURVE server, the pushes to a master clients
    bell = Doorbell(instance, doorbell)
    shared = [SharedRing.attach(instance, name, heartbeat_ms=cfg.ring.heartbeat_ms) for name in ring_names]
    slot = stats.process_slot(instance, f"writer{index}")
    storage = Storage(cfg.broker.data_dir, cfg.log, fs=TimedFileSystem(slot))
    try:
        readers = [s.reader(spin_us=cfg.ring.spin(), dead_after_ms=cfg.ring.dead_after_ms) for s in shared]
        rings = ReaderGroup(readers, bell.signal, spin_us=cfg.ring.spin())
        _serve(index, cfg, ctx, storage, rings, FlushWakeup(bell.signal.post), push_eps, control_ep, replicator_feed_ep,
               master, pub_bind or f"tcp://{cfg.broker.bind}:*", sec, WriterStats(slot))
    finally:
        try:
            storage.close()
        finally:
            for s in shared:
                s.close()
            bell.close()
            sec.close()
            ctx.destroy(linger=1000)


def _serve(index: int, cfg: Config, ctx: zmq.Context, storage: Storage, rings: ReaderGroup, flush_wakeup: FlushWakeup,
           push_eps: list[str], control_ep: str, replicator_feed_ep: str | None, master: bool, pub_at: str,
           sec: BrokerSecurity, writer_stats: WriterStats | None = None) -> None:
    pushes = [make_socket(ctx, zmq.PUSH, linger_ms=2000, sndhwm=0, connect=ep)  # bounded by max_pending_requests
              for ep in push_eps]
    replicator_feed = None if replicator_feed_ep is None else make_socket(ctx, zmq.PUSH, sndhwm=10_000,
                                                                          connect=replicator_feed_ep)
    ctl = make_socket(ctx, zmq.DEALER, linger_ms=1000, connect=control_ep)
    group_commit = GroupCommit(cfg.log, on_io_done=flush_wakeup.set)
    reporter = CompletionReporter(index, pushes, replicated=replicator_feed is not None,
                                  report_every_s=cfg.replication.writer_report_ms / 1000.0,
                                  connect_master_acceptors=partial(_connect_pushes, ctx, sec))

    def publish_once_promoted() -> RoundPublisher:
        pub = _bind_pub(ctx, cfg, index, pub_at, promoted=True, sec=sec)
        endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        ctl.send(control.encoder.encode(control.WriterPublishing(writer=index, endpoint=endpoint)))
        return RoundPublisher(storage, group_commit, pub, replicator_feed)

    publisher, pub_endpoint = None, ""
    if replicator_feed is not None and master:  # this writer publishes its rounds to the slaves itself
        pub = _bind_pub(ctx, cfg, index, pub_at, promoted=False, sec=sec)
        pub_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        publisher = RoundPublisher(storage, group_commit, pub, replicator_feed)
    writer = DiskWriter(storage, group_commit, rings, reporter, flush_wakeup, publisher=publisher,
                        make_publisher=publish_once_promoted if replicator_feed is not None else None,
                        retention_check_s=cfg.log.retention_check_ms / 1000.0, stats=writer_stats)
    signal.signal(signal.SIGTERM, lambda signum, frame: writer.stop())
    signal.signal(signal.SIGUSR2, lambda signum, frame: writer.request_promotion())
    recover_owned(storage, index, cfg.broker.writers)
    writer.report(storage.logs())
    ctl.send(control.encoder.encode(control.WriterReady(writer=index, pid=os.getpid(), pub_endpoint=pub_endpoint)))
    group_commit.start_io_threads()
    freeze_heap()
    writer.run()


def _bind_pub(ctx: zmq.Context, cfg: Config, index: int, at: str, *, promoted: bool,
              sec: BrokerSecurity) -> zmq.Socket:
    """The PUB socket slaves subscribe to: a master's writer binds it at
    start, a slave's only once promoted.  At start a port that cannot be
    bound is an error; at a promotion serving matters more than the port
    (metadata tells slaves where), so the OS chooses one."""
    curve = sec.server(REPLICATION)
    try:
        return make_socket(ctx, zmq.PUB, sndhwm=cfg.replication.pub_hwm, bind=at, curve=curve)
    except zmq.ZMQError as e:
        if not promoted:
            raise RuntimeError(f"writer{index}: cannot bind the replication PUB socket at {at}: {e}") from e
        log.warning("writer%d: cannot bind %s (%s); publishing on a port the OS chooses", index, at, e)
        return make_socket(ctx, zmq.PUB, sndhwm=cfg.replication.pub_hwm, bind=f"tcp://{cfg.broker.bind}:*", curve=curve)


def _connect_pushes(ctx: zmq.Context, sec: BrokerSecurity, endpoints: list[str]) -> list[zmq.Socket]:
    """A slave's writer's PUSH sockets to the master's acceptors."""
    curve = sec.to_master()
    return [make_socket(ctx, zmq.PUSH, sndhwm=100, connect=ep, curve=curve) for ep in endpoints]
