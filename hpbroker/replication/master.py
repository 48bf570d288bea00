"""The master's replicator: serve handshakes and catch-up, track slaves.

The batches themselves go from each writer's own PUB socket to
the slaves (see :meth:`hpbroker.broker.round_publisher.RoundPublisher.publish_round`); they never
pass through this process.  Inputs here: the writers' note of what they
published (ipc PULL: partition, high watermark, bytes) and their watermark
reports (ipc PULL, the same Completions acceptors get).  Outputs: the
catch-up ROUTER (reads the log files read-only, never past the high
watermark) and, to this broker's acceptors, a :class:`ReplicaState`
whenever what the slaves hold changes, which is what releases ``acks=all``
in sync mode.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import msgspec
import zmq
from msgspec.structs import astuple

from hpbroker.io import OffsetOutOfRange, PartitionReader
from hpbroker.io.epochs import EpochCache
from hpbroker.io.layout import partition_dir
from hpbroker.ipc import completions, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.replication import messages as rm
from hpbroker.security.zap import REPLICATION
from hpbroker.sockets import drain, make_socket

log = logging.getLogger("hpbroker.replication")

MAX_TRACKED = 200_000  # commits remembered per partition for lag in bytes and seconds


class Lag:
    """One slave, one partition: what the master committed that the slave
    has not yet made durable, as (end offset, cumulative bytes, time)."""

    def __init__(self):
        self.commits: deque[tuple[int, int, float]] = deque()
        self.cum = 0  # bytes committed since tracking began
        self.acked_cum = 0  # of which the slave holds this many

    def committed(self, end: int, nbytes: int, now: float) -> None:
        self.cum += nbytes
        self.commits.append((end, self.cum, now))
        if len(self.commits) > MAX_TRACKED:
            self.commits.popleft()  # seconds_behind then under-reports; bytes stay exact

    def acked(self, offset: int) -> None:
        c = self.commits
        while c and c[0][0] <= offset:
            self.acked_cum = c.popleft()[1]

    def bytes_behind(self) -> int:
        return self.cum - self.acked_cum if self.commits else 0

    def seconds_behind(self, now: float) -> float:
        return now - self.commits[0][2] if self.commits else 0.0


class SlaveInfo:
    def __init__(self, slave_id: int, now: float):
        self.slave_id = slave_id
        self.durable: dict[str, int] = {}
        self.lag: dict[str, Lag] = {}
        self.last_seen = now
        self.insync = False
        # Kafka's ISR rule: caught up = holds at least what the master had
        # committed when the previous ack came in.
        self.caught_up_at = float("-inf")
        self.prev_hwm: dict[str, int] = {}
        self.prev_time = now

    def on_ack(self, durable: dict[str, int], master_hwm: dict[str, int], now: float) -> None:
        self.durable.update(durable)
        self.last_seen = now
        if all(self.durable.get(k, 0) >= v for k, v in self.prev_hwm.items()):
            self.caught_up_at = self.prev_time
        self.prev_hwm = dict(master_hwm)
        self.prev_time = now


class Master:
    def __init__(self, cfg, ctx: zmq.Context, data_dir: str, epoch: int, feed_ep: str, completions_ep: str,
                 state_ep: str, topics, clock=time.monotonic, reigns=(), security=None):
        """``security``: a hpbroker.security.BrokerSecurity ([security]: the
        two tcp sockets are CURVE servers in the replication ZAP domain)."""
        r = cfg.replication
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.epoch = epoch
        # every epoch this broker led or followed (the supervisor's broker-state.json); a master follows nobody
        self.reigns = sorted(set(reigns) | {epoch})
        self.topics = topics  # callable -> {topic: partitions}
        self.clock = clock
        self.lag_max = r.replica_lag_max_ms / 1000.0
        bind = cfg.broker.bind
        self.feed = make_socket(ctx, zmq.PULL, bind=feed_ep)
        self.comp = make_socket(ctx, zmq.PULL, bind=completions_ep)
        self.state_pub = make_socket(ctx, zmq.PUB, bind=state_ep)
        curve = None if security is None else security.server(REPLICATION)
        self.router = make_socket(ctx, zmq.ROUTER, maxmsgsize=1 << 20, bind=f"tcp://{bind}:{r.fetch_port or '*'}",
                                  curve=curve)
        self.acks = make_socket(ctx, zmq.PULL, maxmsgsize=16 << 20, bind=f"tcp://{bind}:{r.ack_port or '*'}",
                                curve=curve)
        self.endpoints = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in (self.router, self.acks)]
        self.hwm: dict[str, int] = {}
        self.slaves: dict[int, SlaveInfo] = {}
        self.readers: dict[str, PartitionReader] = {}
        self.stopping = False
        self._last_state = None
        self._published = 0

    # -- loop -------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        for s in (self.feed, self.comp, self.router, self.acks):
            poller.register(s, zmq.POLLIN)
        next_state = 0.0
        while not self.stopping:
            events = dict(poller.poll(100))
            if self.feed in events:
                self._drain_feed()
            if self.comp in events:
                self._drain_completions()
            if self.acks in events:
                self._drain_acks()
            if self.router in events:
                self._drain_router()
            now = self.clock()
            if now >= next_state:
                self._broadcast(force=True)
                next_state = now + 0.2

    def _drain_feed(self) -> None:
        now = self.clock()
        for raw in drain(self.feed):
            for topic, partition, hwm, nbytes in (astuple(p) for p in ipc_replica.published_decoder.decode(raw)):
                key = handoff.tp_key(topic, partition)
                end = hwm if hwm >= 0 else self.hwm.get(key, 0)
                for s in self.slaves.values():
                    s.lag.setdefault(key, Lag()).committed(end, nbytes, now)
                if hwm > self.hwm.get(key, -1):
                    self.hwm[key] = hwm
                self._published += 1

    def _drain_completions(self) -> None:
        for frame in drain(self.comp, copy=False):
            c = completions.decoder.decode(frame.buffer)
            for k, v in c.hwm.items():
                if v > self.hwm.get(k, -1):
                    self.hwm[k] = v

    def _drain_acks(self) -> None:
        now = self.clock()
        changed = False
        for raw in drain(self.acks):
            try:
                ack = ipc_replica.slave_ack_decoder.decode(raw)
            except msgspec.DecodeError:  # a stranger's garbage must not stop replication
                continue
            if ack.slave_id not in self.slaves:
                continue  # only slaves that passed the handshake count
            s = self.slaves[ack.slave_id]
            s.on_ack(ack.durable, self.hwm, now)
            for k, v in ack.durable.items():
                lag = s.lag.get(k)
                if lag is not None:
                    lag.acked(v)
            changed = True
        if changed:
            self._broadcast()

    # -- the slaves' requests -------------------------------------------------------------

    def _drain_router(self) -> None:
        for frames in drain(self.router, multipart=True):
            ident = frames[0]
            try:
                msg = rm.to_master.decode(frames[1])
            except Exception as e:  # noqa: BLE001
                self.router.send_multipart([ident, rm.encoder.encode(rm.Refused(reason=f"undecodable request: {e}"))])
                continue
            reply, payload = self._handle(msg)
            self.router.send_multipart([ident, rm.encoder.encode(reply), *payload], copy=False)

    def _handle(self, msg):
        match msg:
            case rm.Hello():
                if msg.cluster_id != self.cfg.broker.cluster_id:
                    log.warning("refused slave %d: cluster id %r is not ours (%r)", msg.slave_id, msg.cluster_id,
                                self.cfg.broker.cluster_id)
                    return rm.Refused(reason=f"cluster id {msg.cluster_id!r} is not this master's {self.cfg.broker.cluster_id!r}"), []
                if msg.slave_id == self.cfg.broker.broker_id:
                    return rm.Refused(reason=f"slave id {msg.slave_id} is this master's own broker id"), []
                if msg.max_epoch > self.epoch:
                    return rm.Refused(reason=f"the slave has seen epoch {msg.max_epoch}, newer than this master's {self.epoch}: "
                                             "this master is stale, or both were master at once (docs/replication.md, "
                                             "\"Two masters\")"), []
                now = self.clock()
                if msg.slave_id not in self.slaves:
                    log.info("slave %d joined", msg.slave_id)
                    self.slaves[msg.slave_id] = SlaveInfo(msg.slave_id, now)
                self.slaves[msg.slave_id].last_seen = now
                return rm.Welcome(cluster_id=self.cfg.broker.cluster_id, master_id=self.cfg.broker.broker_id,
                                  epoch=self.epoch, topics=self.topics(), hwm=dict(self.hwm),
                                  reigns=self.reigns), []
            case rm.EpochEnd():
                return rm.EpochEndReply(answers=[self._epoch_end(t, p, e) for t, p, e in msg.asks]), []
            case rm.CatchUp():
                return self._catch_up(msg)
        return rm.Refused(reason=f"unexpected {type(msg).__name__}"), []

    def _epoch_end(self, topic: str, partition: int, epoch: int):
        key = handoff.tp_key(topic, partition)
        d = partition_dir(str(self.data_dir), topic, partition)
        hwm = self.hwm.get(key, 0)
        try:
            found, end = EpochCache(d, hwm).end_offset_for(epoch, hwm)
        except (OSError, ValueError) as e:
            return topic, partition, -1, -1, f"cannot read the epochs of {key}: {e}"
        return topic, partition, found, end, ""

    def _catch_up(self, msg: rm.CatchUp):
        key = handoff.tp_key(msg.topic, msg.partition)
        hwm = self.hwm.get(key, 0)
        reader = self.readers.get(key)
        if reader is None:
            reader = self.readers[key] = PartitionReader(partition_dir(str(self.data_dir), msg.topic, msg.partition))
        try:
            data = reader.read(msg.offset, min(msg.max_bytes, self.cfg.replication.catchup_bytes), hwm)
        except OffsetOutOfRange as e:
            return rm.CatchUpReply(topic=msg.topic, partition=msg.partition, offset=msg.offset, hwm=hwm, error=str(e)), [b""]
        return rm.CatchUpReply(topic=msg.topic, partition=msg.partition, offset=msg.offset, hwm=hwm), [data]

    # -- what acceptors need ---------------------------------------------------------------

    def _broadcast(self, force: bool = False) -> None:
        now = self.clock()
        insync = []
        for s in self.slaves.values():
            was = s.insync
            s.insync = now - s.last_seen <= self.lag_max and now - s.caught_up_at <= self.lag_max
            if was != s.insync:
                log.warning("slave %d is %s", s.slave_id, "in sync" if s.insync else "OUT OF SYNC")
            if s.insync:
                insync.append(s)
        replicated: dict[str, int] = {}
        if insync:
            for k in set(self.hwm) | {k for s in insync for k in s.durable}:
                replicated[k] = min(s.durable.get(k, 0) for s in insync)
        ids = sorted(s.slave_id for s in insync)
        key = (tuple(ids), tuple(sorted(replicated.items())))
        if not force and key == self._last_state:
            return
        # The stats (lag sums over every partition) ride along on the periodic
        # broadcast and when the in-sync slaves change, not on every slave ack:
        # under load acks come hundreds of times a second and only release acks.
        full = force or self._last_state is None or key[0] != self._last_state[0]
        self._last_state = key
        state = ipc_replica.ReplicaState(role="master", insync=len(insync), replicated=replicated,
                                stats=self.stats(now) if full else None, insync_ids=ids)
        self.state_pub.send(ipc_replica.encoder.encode(state))

    def stats(self, now: float) -> dict:
        out: dict[str, int | float | str] = {
            "replication_role": "master",
            "replication_mode": self.cfg.replication.mode,
            "replication_epoch": self.epoch,
            "replication_endpoints": " ".join(self.endpoints),  # acceptors add the writers' PUBs from metadata
            "replication_slaves": len(self.slaves),
            "replication_published_messages": self._published,
        }
        for s in self.slaves.values():
            p = f"slave_{s.slave_id}_"
            out[p + "insync"] = int(s.insync)
            out[p + "last_seen_s"] = round(now - s.last_seen, 3)
            out[p + "lag_messages"] = sum(max(0, v - s.durable.get(k, 0)) for k, v in self.hwm.items())
            out[p + "lag_bytes"] = sum(lag.bytes_behind() for lag in s.lag.values())
            out[p + "lag_seconds"] = round(max((lag.seconds_behind(now) for lag in s.lag.values()), default=0.0), 3)
        return out
