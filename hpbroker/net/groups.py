"""The acceptor's side of consumer groups: routing, commits through the log,
and the coordinator's offsets table read back from ``__consumer_offsets``.

Which acceptor coordinates a group: the one that serves partition
``crc32(group) % N`` of ``__consumer_offsets`` (N = its partition count,
``groups.offsets_partitions`` when it is created), i.e. acceptor
``that partition % acceptors``, as every partition is served.  Any acceptor
answers FindCoordinator; the others answer a group request with
NOT_COORDINATOR.

A commit is checked by the coordinator (fencing), then handed to the writer
as a produce request of acks=all on the group's offsets partition, with a
:class:`CommitSink` in place of the client's identity.  When the
acceptor's ack logic answers that request, :meth:`GroupService.on_commit_done`
reads the partition forward to its new durable end (so the table only ever
holds what is on disk) and answers the client.  A slave's acceptor, or one
that was a slave before a promotion, reads the same partition the same way:
whatever the log holds is what it serves.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from hpbroker import batch
from hpbroker import config as config_mod
from hpbroker.groups import offsets_log
from hpbroker.groups.coordinator import GroupCoordinator
from hpbroker.groups.offsets_log import TOPIC as OFFSETS_TOPIC
from hpbroker.ipc import handoff
from hpbroker.net.cluster import Cluster
from hpbroker.net.fetch import FetchService
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.groups")

_READ_CHUNK = 1 << 20


class CommitSink:
    """Stands in for a client identity in the produce path: where the
    produce reply of a commit's record goes instead of a socket."""

    __slots__ = ("ident", "req", "partition", "at_ms")

    def __init__(self, ident: bytes, req: m.OffsetCommit, partition: int, at_ms: int):
        self.ident = ident
        self.req = req
        self.partition = partition
        self.at_ms = at_ms  # the commit time its record carries


class GroupService:
    def __init__(self, index: int, cfg: config_mod.Config, cluster: Cluster, fetch: FetchService,
                 produce: Callable[[CommitSink, m.Produce, list], None], clock, wall=time.time):
        """``produce(sink, req, batches)``: hand a produce request to the
        writers as the acceptor does a client's (raises BrokerError);
        ``clock``: monotonic seconds (sessions); ``wall``: epoch seconds (commit times)."""
        self.index = index
        self.cfg = cfg
        self.cluster = cluster
        self.fetch = fetch
        self.produce = produce
        self.clock = clock
        self.wall = wall
        g = cfg.groups
        self.coordinator = GroupCoordinator(heartbeat_interval_ms=g.heartbeat_interval_ms,
                                            min_session_timeout_ms=g.min_session_timeout_ms,
                                            max_session_timeout_ms=g.max_session_timeout_ms,
                                            default_assignor=g.default_assignor)
        self.loaded: dict[int, int] = {}  # offsets partition -> next offset to read back
        self.commits = 0
        self.commit_failures = 0

    # -- routing ----------------------------------------------------------------------

    def _offsets_partitions(self, create: bool, group: str) -> int:
        n = self.cluster.view.topics.get(OFFSETS_TOPIC)
        if n is None:
            if not create:
                raise BrokerError(ErrorCode.GROUP_ID_NOT_FOUND,
                                  f"no group {group!r}: no consumer group exists yet on this broker")
            if self.cluster.view.role == "slave":
                raise BrokerError(ErrorCode.NOT_LEADER,
                                  "this broker is a slave with no __consumer_offsets yet: use the master")
            n = self.cluster.ensure_topic(OFFSETS_TOPIC, self.cfg.groups.offsets_partitions, explicit=True,
                                          if_not_exists=True)
        return n

    def coordinator_of(self, group: str, create: bool = True) -> tuple[int, int]:
        """(offsets partition, acceptor index) of ``group``."""
        p = offsets_log.partition_for(group, self._offsets_partitions(create, group))
        return p, p % len(self.cluster.view.acceptors)

    def _mine(self, group: str, create: bool = True, write: bool = False) -> int:
        """The group's offsets partition, after checking this acceptor
        coordinates it (and, for ``write``, that this broker takes writes)."""
        p, acceptor = self.coordinator_of(group, create)
        if acceptor != self.index:
            raise BrokerError(ErrorCode.NOT_COORDINATOR,
                              f"group {group!r} is coordinated by acceptor {acceptor} "
                              f"({self.cluster.view.acceptors[acceptor]}), not {self.index}: ask FindCoordinator")
        if write and self.cluster.view.role == "slave":
            raise BrokerError(ErrorCode.NOT_LEADER, "this broker is a slave: groups are coordinated by the master")
        self._read_forward(p)
        return p

    # -- requests ---------------------------------------------------------------------

    def find_coordinator(self, req: m.FindCoordinator) -> m.FindCoordinatorReply:
        if self.cluster.view.role == "slave":
            raise BrokerError(ErrorCode.NOT_LEADER, "this broker is a slave: groups are coordinated by the master")
        _, acceptor = self.coordinator_of(req.group)
        return m.FindCoordinatorReply(id=req.id, acceptor=acceptor, endpoint=self.cluster.view.acceptors[acceptor])

    def heartbeat(self, req: m.GroupHeartbeat) -> m.GroupHeartbeatReply:
        self._mine(req.group, write=True)
        return self.coordinator.heartbeat(req, self.cluster.view.topics, self.clock())

    def offset_commit(self, ident: bytes, req: m.OffsetCommit) -> m.OffsetCommitReply | None:
        """The reply now (validate_only, nothing to write, or an error), or
        None: answered by :meth:`on_commit_done` once the record is durable."""
        p = self._mine(req.group, write=True)
        topics = self.cluster.view.topics
        for e in req.offsets:
            n = topics.get(e.topic)
            if n is None or not 0 <= e.partition < n:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no partition {e.topic}/{e.partition}")
            end = self.fetch.hwm.get(handoff.tp_key(e.topic, e.partition), 0)
            if not 0 <= e.offset <= end:
                raise BrokerError(ErrorCode.OFFSET_OUT_OF_RANGE,
                                  f"offset {e.offset} for {e.topic}/{e.partition} is outside the log [0, {end}]: "
                                  "a committed offset is the next one to read, at most the high watermark")
        self.coordinator.check_commit(req.group, req.member_id, req.member_epoch,
                                      [(e.topic, e.partition) for e in req.offsets])
        if req.validate_only or not req.offsets:
            return m.OffsetCommitReply(id=req.id)
        now_ms = int(self.wall() * 1000)
        data = offsets_log.encode_commit(req.group, [(e.topic, e.partition, e.offset, e.metadata) for e in req.offsets],
                                         req.member_epoch, now_ms)
        timeout = min(req.timeout_ms, self.cfg.groups.commit_timeout_ms)
        produce = m.Produce(id=req.id, topic=OFFSETS_TOPIC, partition=p, acks=-1, timeout_ms=timeout)
        self.produce(CommitSink(ident, req, p, now_ms), produce, [memoryview(data)])
        return None

    def on_commit_done(self, sink: CommitSink, reply: m.ProduceReply) -> tuple[bytes, m.OffsetCommitReply]:
        if reply.code:
            self.commit_failures += 1
            return sink.ident, m.OffsetCommitReply(id=sink.req.id, code=reply.code,
                                                   message=f"the commit was not made durable: {reply.message}")
        self.commits += 1
        # The record is durable: apply the request's offsets now rather than
        # read them back (the high watermark moves only after these replies
        # go out, and reading costs a pread and a decode per commit).
        p, base = sink.partition, reply.base_offsets[0] if reply.base_offsets else -1
        for e in sink.req.offsets:
            self.coordinator.apply(sink.req.group, e.topic, e.partition,
                                   offsets_log.Committed(e.offset, e.metadata, sink.at_ms))
        if base >= 0 and self.loaded.get(p, 0) == base:
            self.loaded[p] = base + len(sink.req.offsets)  # nothing to read back: it was the next record
        return sink.ident, m.OffsetCommitReply(id=sink.req.id)

    def offset_fetch(self, req: m.OffsetFetch) -> m.OffsetFetchReply:
        try:
            self._mine(req.group, create=False)
        except BrokerError as e:
            if e.code != ErrorCode.GROUP_ID_NOT_FOUND:
                raise
            return m.OffsetFetchReply(id=req.id)  # no group at all yet: nothing committed
        tps = None if req.partitions is None else {(tp.topic, p) for tp in req.partitions for p in tp.partitions}
        return m.OffsetFetchReply(id=req.id, offsets=self.coordinator.committed(req.group, tps))

    def list_groups(self, req: m.ListGroups) -> m.ListGroupsReply:
        n = self.cluster.view.topics.get(OFFSETS_TOPIC)
        if n is not None:
            for p in range(n):
                if p % len(self.cluster.view.acceptors) == self.index:
                    self._read_forward(p)
        return m.ListGroupsReply(id=req.id, groups=self.coordinator.list_groups())

    def describe(self, req: m.DescribeGroup) -> m.DescribeGroupReply:
        self._mine(req.group, create=False)

        def hwm(t: str, p: int) -> int:
            return self.fetch.visible(handoff.tp_key(t, p))

        def start(t: str, p: int) -> int:
            return self.fetch.log_start.get(handoff.tp_key(t, p), 0)

        return self.coordinator.describe(req, self.cluster.view.topics, hwm, start, self.clock())

    def tick(self, now: float) -> None:
        if not self.coordinator.groups:
            return
        for group, member, why in self.coordinator.expire(self.cluster.view.topics, now):
            log.info("group %s: removed member %s: %s", group, member, why)

    def stats(self) -> dict:
        c = self.coordinator
        return {"groups": len(c.groups), "group_members": sum(len(g.members) for g in c.groups.values()),
                "group_rebalances": c.rebalances, "group_partitions_moved": c.moved_partitions,
                "offset_commits": self.commits, "offset_commit_failures": self.commit_failures}

    # -- the log ------------------------------------------------------------------------

    def _read_forward(self, p: int) -> None:
        """Apply the records of offsets partition ``p`` from where the last
        read stopped to its durable end."""
        key = handoff.tp_key(OFFSETS_TOPIC, p)
        end = self.fetch.hwm.get(key, 0)
        at = self.loaded.get(p, 0)
        if at >= end:
            return
        at = max(at, self.fetch.log_start.get(key, 0))
        reader = self.fetch.reader(OFFSETS_TOPIC, p)
        apply = self.coordinator.apply
        while at < end:
            data = reader.read(at, _READ_CHUNK, end)
            if not data:
                break
            for group, topic, partition, committed in offsets_log.decode_records(data):
                apply(group, topic, partition, committed)
            last = _last_offset(data)
            if last <= at:
                break
            at = last
        self.loaded[p] = at


def _last_offset(data) -> int:
    """The offset after the last record of the whole batches in ``data``."""
    end = 0
    for _, h in batch.iter_batches(memoryview(data)):
        end = h.base_offset + h.record_count
    return end
