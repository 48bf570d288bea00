"""``Admin``: topics, offsets and consumer groups, one synchronous request at a time.

Groups (docs/consumer.md): every acceptor coordinates its own share of the
groups, so :meth:`Admin.list_groups` asks each one and merges; the other
group calls go to the group's coordinator (FindCoordinator first, and once
more when it answers NOT_COORDINATOR).  :meth:`Admin.reset_offsets` writes
with an admin commit (no member id), which the coordinator takes only while
the group has no live members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence, Union

from hpbroker.client.membership import find_coordinator
from hpbroker.client.transport import Transport, client_curve
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import EARLIEST, LATEST, CreateTopic, ListOffsets, MetadataReply, TopicMetadata


class PartitionInfo(NamedTuple):
    partition: int
    leader: int
    leader_epoch: int
    earliest: int
    latest: int


class GroupListing(NamedTuple):
    group: str
    #: "stable", "reconciling" (partitions still moving) or "empty" (committed offsets only)
    state: str
    members: int


class GroupMember(NamedTuple):
    member_id: str
    instance_id: str
    client_host: str
    member_epoch: int
    topics: list[str]
    #: (topic, partition) it owns now, being revoked included, sorted
    assignment: list[tuple[str, int]]
    #: owned partitions it was told to give up and has not released yet
    revoking: list[tuple[str, int]]
    last_heartbeat_ms_ago: int


class PartitionLag(NamedTuple):
    topic: str
    partition: int
    #: the next offset the group reads; None when never committed
    committed: int | None
    high_watermark: int
    #: high_watermark - committed (from the log start when never committed)
    lag: int
    #: the owning member's id; None when nobody owns it
    owner: str | None


@dataclass(frozen=True)
class GroupDescription:
    group: str
    state: str
    group_epoch: int
    assignor: str
    members: list[GroupMember] = field(default_factory=list)
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


class OffsetReset(NamedTuple):
    topic: str
    partition: int
    #: the committed offset before; None when never committed
    old: int | None
    new: int


class ResetSpec(NamedTuple):
    """Where :meth:`Admin.reset_offsets` moves each partition: ``kind``
    "to-earliest", "to-latest", "to-datetime" (``value``: ms since the
    epoch) or "shift" (``value``: N, added to the committed offset)."""

    kind: str
    value: int = 0


RESET_KINDS = ("to-earliest", "to-latest", "to-datetime", "shift")


def reset_spec(spec: Union[str, tuple, ResetSpec]) -> ResetSpec:
    """"to-earliest", "to-latest", ("to-datetime", ms), ("shift", n) or a ResetSpec -> ResetSpec."""
    if isinstance(spec, str):
        spec = (spec,)
    if not isinstance(spec, tuple) or not spec or spec[0] not in RESET_KINDS:
        raise ValueError(f"reset spec must be one of 'to-earliest', 'to-latest', ('to-datetime', ms), ('shift', n); "
                         f"got {spec!r}")
    kind = spec[0]
    if kind in ("to-earliest", "to-latest"):
        if len(spec) > 1 and spec[1] not in (0, None):
            raise ValueError(f"{kind} takes no value, got {spec[1]!r}")
        return ResetSpec(kind)
    if len(spec) != 2 or not isinstance(spec[1], int) or isinstance(spec[1], bool):
        raise ValueError(f"{kind} needs an int value: ({kind!r}, N), got {spec!r}")
    if kind == "to-datetime" and spec[1] < 0:
        raise ValueError(f"to-datetime needs a timestamp in ms >= 0, got {spec[1]}")
    return ResetSpec(kind, spec[1])


class Admin:
    def __new__(cls, bootstrap: str = "tcp://127.0.0.1:7600", *args, **kwargs):
        """``Admin("zk://HOST:PORT/chroot")`` is a
        :class:`~hpbroker.client.cluster_admin.ClusterAdmin`: topics across
        the replica sets found in ZooKeeper (docs/client.md, "Clusters: zk:// URLs")."""
        if cls is Admin and isinstance(bootstrap, str) and bootstrap.strip().startswith("zk://"):
            from hpbroker.client.cluster_admin import ClusterAdmin

            return ClusterAdmin(bootstrap, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, bootstrap: str = "tcp://127.0.0.1:7600", *, request_timeout_ms: int = 30_000,
                 connect_timeout_ms: int = 10_000, curve_secret_key_file: str | None = None,
                 broker_public_key: str | bytes | None = None):
        self._t = Transport(bootstrap, request_timeout_ms=request_timeout_ms,
                            curve=client_curve(curve_secret_key_file, broker_public_key))
        self.connect_timeout_ms = connect_timeout_ms
        self._bootstrapped = False
        self._coordinators: dict[str, str] = {}

    def metadata(self, topics: list[str] | None = None) -> MetadataReply:
        """The raw metadata reply.  Naming a topic may auto-create it
        (broker setting); ``None`` lists the existing ones only."""
        rep = self._t.metadata(topics, timeout_ms=None if self._bootstrapped else self.connect_timeout_ms)
        self._bootstrapped = True
        return rep

    def create_topic(self, name: str, partitions: int, *, if_not_exists: bool = False) -> int:
        """Create ``name``; returns its partition count."""
        self._ensure()
        rep, _ = self._t.call(self._t.acceptors[0], CreateTopic(id=self._t.next_id(), topic=name, partitions=partitions,
                                                                if_not_exists=if_not_exists))
        return rep.partitions

    def list_topics(self) -> dict[str, int]:
        """{topic: partition count} of every existing topic."""
        return {t.name: len(t.partitions) for t in self.metadata(None).topics if not t.code}

    def topic(self, name: str) -> TopicMetadata:
        """Metadata of an existing topic (never auto-creates it)."""
        for t in self.metadata(None).topics:
            if t.name == name and not t.code:
                return t
        raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")

    def describe(self, name: str) -> list[PartitionInfo]:
        """Every partition of ``name`` with its leader and earliest/latest offsets."""
        t = self.topic(name)
        return [
            PartitionInfo(p.partition, p.leader, p.leader_epoch,
                          self.list_offsets(name, p.partition, EARLIEST), self.list_offsets(name, p.partition, LATEST))
            for p in sorted(t.partitions, key=lambda p: p.partition)
        ]

    def list_offsets(self, topic: str, partition: int, spec: int) -> int:
        """spec -2 = earliest, -1 = latest (high watermark), >= 0 = timestamp ms."""
        self._ensure()
        rep, _ = self._t.call(self._t.endpoint_for(partition),
                              ListOffsets(id=self._t.next_id(), topic=topic, partition=partition, spec=spec))
        return rep.offset

    # -- consumer groups ------------------------------------------------------------------

    def list_groups(self) -> list[GroupListing]:
        """Every group of every acceptor (each coordinates its own), by name."""
        self._ensure()
        out: dict[str, GroupListing] = {}
        for endpoint in dict.fromkeys(self._t.acceptors):
            rep, _ = self._t.call(endpoint, m.ListGroups(id=self._t.next_id()))
            for g in rep.groups:
                out[g.group] = GroupListing(g.group, g.state, g.members)
        return [out[k] for k in sorted(out)]

    def describe_group(self, group: str) -> GroupDescription:
        """Members with their assignment, and per partition the committed
        offset, high watermark, lag and owner.  Raises BrokerError
        GROUP_ID_NOT_FOUND for a group with no members and no commits."""
        rep = self._group_call(group, lambda i: m.DescribeGroup(id=i, group=group))
        members = [GroupMember(d.member_id, d.instance_id, d.client_host, d.member_epoch, list(d.topics),
                               _pairs(d.assignment), _pairs(d.revoking), d.last_heartbeat_ms_ago)
                   for d in rep.members]
        parts = [PartitionLag(p.topic, p.partition, None if p.committed < 0 else p.committed, p.high_watermark, p.lag,
                              p.owner or None)
                 for p in rep.partitions]
        return GroupDescription(rep.group, rep.state, rep.group_epoch, rep.assignor, members, parts)

    def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """{(topic, partition): committed offset} of ``group`` ({} when it has none)."""
        rep = self._group_call(group, lambda i: m.OffsetFetch(id=i, group=group, partitions=None))
        return {(e.topic, e.partition): e.offset for e in rep.offsets}

    def reset_offsets(self, group: str, spec, topics: Sequence[str] | None = None,
                      dry_run: bool = False) -> list[OffsetReset]:
        """Move ``group``'s committed offsets in every partition of ``topics``
        (default: the topics it has committed offsets for) as ``spec`` says:
        "to-earliest", "to-latest", ("to-datetime", ms) - the first offset
        whose batch's max timestamp is >= ms, the high watermark when none -
        or ("shift", n) - the committed offset plus n (the log start when
        never committed), clamped to [log start, high watermark].

        Refused (BrokerError NON_EMPTY_GROUP) while the group has live
        members: they own its offsets.  ``dry_run``: compute, commit
        nothing.  Returns (topic, partition, old, new) for each partition."""
        spec = reset_spec(spec)
        try:
            desc = self.describe_group(group)
        except BrokerError as e:
            if e.code != ErrorCode.GROUP_ID_NOT_FOUND or not topics:
                raise
            desc = None  # a group that does not exist yet: its first offsets
        if desc is not None and desc.members:
            raise BrokerError(ErrorCode.NON_EMPTY_GROUP, _live_members(group, desc.members))
        committed = self.committed_offsets(group) if desc is not None else {}
        names = list(dict.fromkeys(topics)) if topics else sorted({t for t, _ in committed})
        if not names:
            raise BrokerError(ErrorCode.GROUP_ID_NOT_FOUND,
                              f"group {group!r} has no committed offsets: name the topics to reset")
        counts = {}
        for name in names:
            counts[name] = len(self.topic(name).partitions)
        out = []
        for name in names:
            for p in range(counts[name]):
                old = committed.get((name, p))
                out.append(OffsetReset(name, p, old, self._reset_target(name, p, spec, old)))
        if not dry_run and out:
            entries = [m.OffsetEntry(r.topic, r.partition, r.new) for r in out]
            try:
                self._group_call(group, lambda i: m.OffsetCommit(id=i, group=group, member_id="", member_epoch=-1,
                                                                  offsets=entries))
            except BrokerError as e:
                if e.code == ErrorCode.NON_EMPTY_GROUP:  # a member joined since the check
                    raise BrokerError(e.code, f"{e.message} (a member joined while the offsets were computed)") from None
                raise
        return out

    def _reset_target(self, topic: str, partition: int, spec: ResetSpec, old: int | None) -> int:
        if spec.kind == "to-earliest":
            return self.list_offsets(topic, partition, EARLIEST)
        if spec.kind == "to-latest":
            return self.list_offsets(topic, partition, LATEST)
        if spec.kind == "to-datetime":
            return self.list_offsets(topic, partition, spec.value)
        start = self.list_offsets(topic, partition, EARLIEST)
        end = self.list_offsets(topic, partition, LATEST)
        base = start if old is None else old
        return min(max(base + spec.value, start), end)

    def _group_call(self, group: str, make):
        """``make(id)`` to ``group``'s coordinator; looked up again once
        when the coordinator moved."""
        self._ensure()
        for attempt in range(2):
            endpoint = self._coordinators.get(group)
            if endpoint is None:
                endpoint = self._coordinators[group] = find_coordinator(self._t, group)
            try:
                rep, _ = self._t.call(endpoint, make(self._t.next_id()))
                return rep
            except BrokerError as e:
                if e.code in (ErrorCode.NOT_COORDINATOR, ErrorCode.REQUEST_TIMED_OUT):
                    self._coordinators.pop(group, None)
                if e.code != ErrorCode.NOT_COORDINATOR or attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ensure(self) -> None:
        if not self._bootstrapped:
            self.metadata(None)


def _pairs(lists: list[m.TopicPartitions]) -> list[tuple[str, int]]:
    return sorted((tp.topic, p) for tp in lists for p in tp.partitions)


def _live_members(group: str, members: list[GroupMember]) -> str:
    who = ", ".join(f"{mem.member_id} ({mem.instance_id or '-'}@{mem.client_host or '-'})" for mem in members[:3])
    more = f" and {len(members) - 3} more" if len(members) > 3 else ""
    return (f"group {group!r} has {len(members)} live member{'s' if len(members) != 1 else ''}: {who}{more}; "
            "stop them (or wait for their sessions to expire) before resetting its offsets")
