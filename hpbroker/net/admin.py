"""The acceptor's answers to the requests about the broker rather than its data.

=============  ================================================================
request        answered from
=============  ================================================================
Metadata       the cluster view (creating unknown topics if
               ``broker.auto_create_topics``)
ListOffsets    the watermarks the writers published, and a partition's time index
Stats          the view, the produce requests in flight, the replicator's stats
CreateTopic    the supervisor (it owns the topic registry)
Promote        the supervisor, after asking the slave's master whether it still
               answers as a master (unless ``force``)
=============  ================================================================

Each method returns the reply; errors are raised as ``BrokerError`` for the
dispatcher to answer.
"""

from __future__ import annotations

import os
import time

import msgspec
import zmq

from hpbroker import config as config_mod
from hpbroker.io import scrub
from hpbroker.ipc import control, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.net.acks import ProduceAcks
from hpbroker.net.cluster import Cluster
from hpbroker.net.fetch import FetchService
from hpbroker.net.readiness import readiness
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.replication.probe import master_answering


class Admin:
    def __init__(self, index: int, cfg: config_mod.Config, cluster: Cluster, acks: ProduceAcks, fetch: FetchService,
                 ctx: zmq.Context, groups=None, transactions=None, probe_curve=None):
        self.index = index
        self.cfg = cfg
        self.cluster = cluster
        self.acks = acks
        self.fetch = fetch
        self.ctx = ctx  # for the promotion probe's short-lived socket
        self.probe_curve = probe_curve  # and its CURVE options ([security] on a slave)
        self.groups = groups  # net.groups.GroupService: its counters
        self.transactions = transactions  # net.transactions.TxService: its counters
        self._map_raw: bytes = b""  # the view's encoded cluster map last decoded, and the decoded map
        self._map: m.ClusterMap | None = None
        self.lease = None  # cluster mode: the fencing lease (hpbroker/ipc/lease.py)

    def metadata(self, req: m.Metadata) -> m.MetadataReply:
        view = self.cluster.view
        names = list(view.topics) if req.topics is None else req.topics
        topics = []
        for name in names:
            try:
                n = self.cluster.partitions_of(name, auto=self.cfg.broker.auto_create_topics)
            except BrokerError as e:
                topics.append(m.TopicMetadata(name=name, code=e.code))
                continue
            view = self.cluster.view  # creating the topic brought a new one
            parts = [m.PartitionMetadata(partition=p, leader=view.leader_id, leader_epoch=view.leader_epoch)
                     for p in range(n)]
            topics.append(m.TopicMetadata(name=name, partitions=parts))
        view = self.cluster.view
        return m.MetadataReply(id=req.id, cluster_id=view.cluster_id, broker_id=view.broker_id,
                               acceptors=view.acceptors, topics=topics,
                               max_batch_bytes=self.cfg.broker.max_batch_bytes,
                               max_request_bytes=self.cfg.broker.max_request_bytes,
                               role=view.role, replication=view.replication,
                               replication_version=ipc_replica.VERSION if view.replication else 0,
                               replication_acks=view.replication_acks, leader_epoch=view.leader_epoch,
                               cluster=self._cluster_map(view.cluster_map, req.topics))

    def _cluster_map(self, raw: bytes, topics: list[str] | None) -> m.ClusterMap | None:
        """Cluster mode: the map the supervisor last published, decoded once per change."""
        if not raw:
            return None
        if raw is not self._map_raw:
            self._map_raw, self._map = raw, msgspec.msgpack.decode(raw, type=m.ClusterMap)
        if topics is None:
            return self._map
        want = set(topics)
        return msgspec.structs.replace(self._map, topics=[t for t in self._map.topics if t.name in want])

    def list_offsets(self, req: m.ListOffsets) -> m.ListOffsetsReply:
        self.cluster.check_partition(req.topic, req.partition, auto=False)
        key = handoff.tp_key(req.topic, req.partition)
        hwm = self.fetch.visible(key)  # "latest" is where consumers can read up to
        if req.spec == m.EARLIEST:
            offset = self.fetch.log_start.get(key, 0)
        elif req.spec == m.LATEST:
            offset = hwm
        else:
            off = self.fetch.reader(req.topic, req.partition).offset_for_timestamp(req.spec, hwm)
            offset = hwm if off is None else off
        return m.ListOffsetsReply(id=req.id, offset=offset)

    def stats(self, req: m.Stats) -> m.StatsReply:
        view, policy = self.cluster.view, self.acks.policy
        out = {
            "role": view.role,
            "leader_epoch": view.leader_epoch,
            "acceptor": self.index,
            "pid": os.getpid(),
            "pending_requests": len(self.acks),
            "topics": len(view.topics),
            "partitions": len(self.fetch.hwm),
            "messages": sum(self.fetch.hwm.values()) - sum(self.fetch.log_start.values()),
        }
        out.update(policy.stats)
        if self.groups is not None:
            out.update(self.groups.stats())
        if self.transactions is not None:
            out.update(self.transactions.stats())
        # until the replicator's first broadcast: the supervisor's role, not the
        # flags' (a promoted broker restarted with slave flags is a master)
        out.setdefault("replication_role", view.role)
        if replicated_fetch_bound(self.cfg.replication):
            out["fetch_bound"] = "replicated" if self.fetch.bound is not None else "durable (no slave in sync)"
            out["messages_awaiting_replication"] = self.fetch.held_back()
        if self.cfg.replication.role != "standalone":  # the acceptor takes slave writers' reports
            out["replication_direct_acks"] = policy.direct_acks
            out["replication_direct_acks_refused"] = policy.direct_refused
        if self.cfg.scrub.enabled:  # docs/reliability.md, "The scrubber"
            out.update(scrub.stats(self.cfg.broker.data_dir))
        if view.promoted_from:
            out["promoted_from"] = view.promoted_from
        if self.lease is not None:  # cluster mode (docs/cluster.md, "Fencing")
            left = self.lease.deadline - time.monotonic()
            out["cluster_fenced"] = int(left <= 0)
            out["cluster_lease_remaining_s"] = round(max(0.0, left), 3)
        if view.replication:  # the metadata's full list: [fetch, ack, each writer's PUB]
            out["replication_endpoints"] = " ".join(view.replication)
        out.update(_io_stats(self.cfg.instance))
        out["ready"], out["ready_reason"] = readiness(view.role, out)  # hpbroker/net/readiness.py
        return m.StatsReply(id=req.id, stats=out)

    def create_topic(self, req: m.CreateTopic) -> m.CreateTopicReply:
        n = self.cluster.ensure_topic(req.topic, req.partitions, explicit=True, if_not_exists=req.if_not_exists)
        return m.CreateTopicReply(id=req.id, partitions=n)

    def promote(self, req: m.Promote) -> m.PromoteReply:
        if not req.force:
            self._refuse_promotion_while_master_answers()
        reply = self.cluster.ask(control.Promote(), timeout_ms=60_000)
        if not reply.code and self.cluster.view.role == "slave":
            # the supervisor's new view is on its way; until it comes, this
            # acceptor answers as the master it now is (a request right after
            # the reply must not see a slave)
            self.cluster.view = msgspec.structs.replace(self.cluster.view, role="master", leader_epoch=reply.epoch)
        return m.PromoteReply(id=req.id, code=reply.code, message=reply.message, leader_epoch=reply.epoch)

    def _refuse_promotion_while_master_answers(self) -> None:
        """A slave's master that still answers as a master would go on taking
        produce requests beside the promoted slave: two masters.  Blocks this
        acceptor for up to replication.promote_probe_ms (a promotion is rare,
        and it blocks anyway while the supervisor promotes)."""
        r = self.cfg.replication
        if self.cluster.view.role != "slave" or not r.master:
            return  # the supervisor answers "not a slave"
        rep = master_answering(self.ctx, r.master, r.promote_probe_ms, self.cfg.broker.broker_id,
                               curve=self.probe_curve)
        if rep is not None:
            raise BrokerError(ErrorCode.BAD_REQUEST,
                              f"the master at {r.master} (broker {rep.broker_id}, epoch {rep.leader_epoch}) still answers "
                              "as master: promoting this slave now would make two masters (docs/replication.md, "
                              "\"Two masters\"). Stop that broker first, or promote with --force")


def replicated_fetch_bound(r: config_mod.ReplicationConfig) -> bool:
    """Do a master's consumers read only up to what the in-sync slaves hold (replication.fetch_bound)?"""
    return r.fetch_bound == "replicated" or (r.fetch_bound == "auto" and r.mode == "sync")


def _io_stats(instance: str) -> dict:
    """Group commit, fdatasync and ack latency from the broker's stats block
    (hpbroker/stats/summary.py); nothing when this process has no block."""
    from hpbroker.stats import block_of
    from hpbroker.stats.reader import snapshot
    from hpbroker.stats.summary import io_stats

    block = block_of(instance)
    return {} if block is None else io_stats(snapshot(block, rows=False))
