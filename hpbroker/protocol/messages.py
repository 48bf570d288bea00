"""Wire messages: frozen msgspec Structs, one tagged union per direction.

Every message is the header frame (frame 0) of a ZeroMQ multipart message,
encoded as a msgpack map.  The map's ``"t"`` key holds the type name (the
class name below), ``"v"`` the protocol version (1) and ``"id"`` the
correlation id the client chose, echoed unchanged in the reply.  Frames
1.. are raw payload (record batches, or message values for
:class:`ProduceMessages`).  docs/protocol.md is the full description.

Fields with defaults may be left out by a sender; unknown keys are ignored
(so later versions can add fields).  Field constraints (``Meta``) are
checked when a message is decoded, not when it is constructed.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from hpbroker.protocol.base import (  # noqa: F401  (re-exported: the names every sender uses)
    ANY_PARTITION, EARLIEST, LATEST, PROTOCOL_VERSION, Acks, M, Partition, TimeoutMs, TopicName, _Message, _Reply,
    _Request)
from hpbroker.protocol.tx_messages import (  # noqa: F401
    TX_REPLY_FOR, TX_REPLY_TYPES, TX_REQUEST_TYPES, TxBegin, TxBeginReply, TxEnd, TxInfo, TxList, TxListReply, TxPart,
    TxProduce, TxReply)


# --------------------------------------------------------------- requests


class Metadata(_Request):
    """Cluster layout: acceptor endpoints, topics and their partitions.
    ``topics=None`` lists every topic; a named topic that does not exist is
    auto-created when the broker allows it."""

    topics: list[TopicName] | None = None


class Produce(_Request):
    """Frames 1..n: one record batch each (hpbroker.batch format), all for
    this one topic-partition.  acks 0 = no reply, 1 = reply after the local
    durable commit, -1 = all replicas (equal to 1 until replication)."""

    topic: TopicName
    partition: Partition
    acks: Acks = 1
    timeout_ms: TimeoutMs = 30000


class ProduceMessages(_Request):
    """Frames 1..n: one message value each (keys=True: key, value, key,
    value, ...); the broker builds one batch.  partition -1 = broker picks."""

    topic: TopicName
    partition: Annotated[int, M(ge=-1, le=0x7FFFFFFF)] = ANY_PARTITION
    acks: Acks = 1
    timeout_ms: TimeoutMs = 30000
    keys: bool = False


class Fetch(_Request):
    """Whole batches starting with the one that holds ``offset``, up to
    ``max_bytes`` (at least one batch), never past the high watermark.
    Long poll: wait up to ``max_wait_ms`` for ``min_bytes``.

    ``filter``: a server-side filter (a msgpack map in the language of
    :mod:`hpbroker.protocol.filters`), kept as its raw msgpack so the broker
    checks its size before decoding it; unset (left out of the header, as
    old clients do) or null for none.  With one, the reply holds only the
    matching records and ``FetchReply.next_offset`` says where to go on."""

    topic: TopicName
    partition: Partition
    offset: Annotated[int, M(ge=0)]
    max_bytes: Annotated[int, M(ge=1)] = 1 << 20
    max_wait_ms: TimeoutMs = 0
    min_bytes: Annotated[int, M(ge=0)] = 1
    filter: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class ListOffsets(_Request):
    """spec -2 = earliest, -1 = latest (high watermark), >= 0 = timestamp
    in ms: the first offset whose batch ``max_timestamp`` >= spec (the high
    watermark when there is none)."""

    topic: TopicName
    partition: Partition
    spec: Annotated[int, M(ge=-2)]


class CreateTopic(_Request):
    topic: TopicName
    partitions: Annotated[int, M(ge=1, le=1 << 16)]
    if_not_exists: bool = False


class Stats(_Request):
    """The broker's counters, as MetaQ's ``stats``: name -> value."""


class Promote(_Request):
    """Make this slave the master, with a new leader epoch (admin).  Refused
    while its master still answers as a master, unless ``force``."""

    force: bool = False


# ------------------------------------------------------- consumer groups
#
# docs/protocol.md section 3, "Consumer groups", and docs/consumer.md.  A
# group's requests go to its coordinator, the acceptor FindCoordinator
# names; any other acceptor answers NOT_COORDINATOR.

#: A consumer group's name (MetaQ's group names, plus ``@`` for the
#: instance names of broadcast consumers).
GroupId = Annotated[str, M(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]
MemberId = Annotated[str, M(max_length=64)]

#: GroupHeartbeat ``member_epoch`` values.
JOIN = 0
LEAVE = -1


class TopicPartitions(msgspec.Struct, frozen=True):
    topic: str
    partitions: list[int]


class OffsetEntry(msgspec.Struct, frozen=True):
    """A committed offset: the next offset the group reads in that partition."""

    topic: str
    partition: int
    offset: int
    metadata: str = ""
    #: OffsetFetch/DescribeGroup replies: when it was committed (ms since the epoch).
    commit_timestamp: int = -1


class FindCoordinator(_Request):
    """Which acceptor coordinates ``group`` (any acceptor answers)."""

    group: GroupId


class GroupHeartbeat(_Request):
    """Join (``member_epoch`` 0), stay (the epoch last given) or leave (-1).

    Assignment is computed by the broker (Kafka's KIP-848 shape): the reply
    says which partitions the member owns now.  A partition another member
    still owns is given only once that member has reported releasing it
    (``owned``) or has been removed, so no partition ever has two owners."""

    group: GroupId
    member_id: MemberId = ""
    member_epoch: Annotated[int, M(ge=-1)] = JOIN
    #: a name for people (``groups describe``); broadcast consumers' instance name
    instance_id: Annotated[str, M(max_length=249)] = ""
    client_host: Annotated[str, M(max_length=255)] = ""
    topics: list[TopicName] = []
    #: "range", "roundrobin" or "sticky"; "" = the broker's groups.default_assignor
    assignor: Annotated[str, M(max_length=32)] = ""
    session_timeout_ms: Annotated[int, M(ge=1, le=1 << 31)] = 10_000
    rebalance_timeout_ms: Annotated[int, M(ge=1, le=1 << 31)] = 300_000
    #: the partitions the member consumes now (what it was given, less what it released)
    owned: list[TopicPartitions] = []


class OffsetCommit(_Request):
    """Commit ``offsets`` for ``group``, durably (as a produce with acks=all
    to the internal ``__consumer_offsets`` topic) before the reply.  A
    member commits with its id and epoch, and only for partitions it owns
    (else FENCED_MEMBER_EPOCH / UNKNOWN_MEMBER_ID).  ``member_id`` "" and
    ``member_epoch`` -1: an admin commit, allowed only while the group has
    no members.  ``validate_only``: check the fencing, write nothing (for
    consumers whose offsets live in another store)."""

    group: GroupId
    member_id: MemberId = ""
    member_epoch: Annotated[int, M(ge=-1)] = -1
    offsets: list[OffsetEntry] = []
    validate_only: bool = False
    timeout_ms: TimeoutMs = 30000


class OffsetFetch(_Request):
    """The committed offsets of ``group`` (all of them when ``partitions`` is null)."""

    group: GroupId
    partitions: list[TopicPartitions] | None = None


class ListGroups(_Request):
    """The groups this acceptor coordinates (ask every acceptor for all)."""


class DescribeGroup(_Request):
    """Members, assignment, committed offsets and lag of one group."""

    group: GroupId


class InitProducerId(_Request):
    """A producer id for an idempotent producer (any acceptor answers).
    Its batches then carry that id and per-partition sequence numbers
    (docs/protocol.md, "Idempotent producers")."""


Request = Union[Metadata, Produce, ProduceMessages, Fetch, ListOffsets, CreateTopic, Stats, Promote, FindCoordinator,
                GroupHeartbeat, OffsetCommit, OffsetFetch, ListGroups, DescribeGroup, InitProducerId, TxBegin, TxProduce,
                TxEnd, TxList]
REQUEST_TYPES: tuple[type, ...] = (Metadata, Produce, ProduceMessages, Fetch, ListOffsets, CreateTopic, Stats, Promote,
                                   FindCoordinator, GroupHeartbeat, OffsetCommit, OffsetFetch, ListGroups, DescribeGroup,
                                   InitProducerId) + TX_REQUEST_TYPES

# ------------------------------------------------------------------ replies


class PartitionMetadata(msgspec.Struct, frozen=True):
    partition: int
    leader: int
    leader_epoch: int = 0


class TopicMetadata(msgspec.Struct, frozen=True):
    name: str
    partitions: list[PartitionMetadata] = []
    #: UNKNOWN_TOPIC_OR_PARTITION for a requested topic that does not exist
    #: (and was not auto-created); 0 otherwise.
    code: int = 0


class ReplicaSetInfo(msgspec.Struct, frozen=True):
    """Cluster mode: one replica set as ZooKeeper has it (docs/cluster.md)."""

    replica_set: int
    master: str = ""  # its master's client URL; "" while it has none (a failover)
    master_id: int = -1
    epoch: int = 0  # the leader epoch its master serves
    slaves: list[str] = []  # the client URLs of its slaves, by broker id


class GlobalTopic(msgspec.Struct, frozen=True):
    """Cluster mode: how a topic spreads over replica sets.  ``sets`` is
    [[set, partitions], ...] in set order; the topic's global partition g
    is the g-th (set, partition) pair of that list, partitions 0..n-1 of
    each set in turn (MetaQ's ``<set>-<partition>``)."""

    name: str
    sets: list[list[int]] = []


class ClusterMap(msgspec.Struct, frozen=True):
    """Cluster mode: the whole map - every replica set and every topic's
    spread - as the answering broker last read it from ZooKeeper."""

    zookeeper: str = ""
    sets: list[ReplicaSetInfo] = []
    topics: list[GlobalTopic] = []


class MetadataReply(_Reply):
    cluster_id: str = ""
    broker_id: int = 0
    #: tcp endpoints; index = acceptor number.  Partition p is served by
    #: acceptor ``p % len(acceptors)``.
    acceptors: list[str] = []
    topics: list[TopicMetadata] = []
    #: largest batch (one payload frame) the broker accepts; 0 = not stated.
    max_batch_bytes: int = 0
    #: largest Produce request (all its batch frames together); 0 = not stated.
    max_request_bytes: int = 0
    #: "standalone", "master" or "slave".  A slave refuses produce with
    #: NOT_LEADER; its partitions' ``leader`` is the master's broker id.
    role: str = ""
    #: a master's replication endpoints [fetch, ack, pub of each writer...]; else empty.
    replication: list[str] = []
    #: the layout of ``replication`` and of the streams behind it; a slave
    #: follows only a master that speaks its version (0 = before writers published).
    replication_version: int = 0
    #: a master's acceptors' PULL endpoints (by acceptor) where slaves' writers
    #: report what they made durable; empty when not a master.
    replication_acks: list[str] = []
    #: the leader epoch this broker serves as master, or follows as a slave.
    #: A client given several brokers writes to the master with the highest.
    leader_epoch: int = 0
    #: cluster mode: the whole cluster (every replica set, each topic's
    #: spread; the requested topics only when the request names some); None otherwise.
    cluster: ClusterMap | None = None


class ProduceReply(_Reply):
    #: one per batch in request order (ProduceMessages: one entry).
    base_offsets: list[int] = []
    #: the partition written (useful when ProduceMessages asked for -1).
    partition: int = -1


class FetchReply(_Reply):
    """Followed by ONE payload frame: whole raw batches concatenated
    (possibly empty)."""

    high_watermark: int = -1
    log_start_offset: int = -1
    #: where the next fetch starts: past the last batch of the payload, and
    #: past every record a filter dropped; the request's offset when nothing
    #: was read.  -1 on error, and from brokers before filters.
    next_offset: int = -1


class ListOffsetsReply(_Reply):
    offset: int = -1


class CreateTopicReply(_Reply):
    partitions: int = 0


class StatsReply(_Reply):
    stats: dict[str, Union[int, float, str]] = {}


class PromoteReply(_Reply):
    leader_epoch: int = -1


class FindCoordinatorReply(_Reply):
    acceptor: int = -1
    endpoint: str = ""


class GroupHeartbeatReply(_Reply):
    member_id: str = ""
    #: -1 after a leave
    member_epoch: int = -1
    #: how often the broker wants a heartbeat (also sooner, after a change of ``owned``)
    heartbeat_interval_ms: int = 0
    #: the partitions the member owns now: it stops consuming (after its
    #: on_revoke) any it holds that are not listed, then says so in ``owned``
    assignment: list[TopicPartitions] = []


class OffsetCommitReply(_Reply):
    pass


class OffsetFetchReply(_Reply):
    offsets: list[OffsetEntry] = []


class GroupListing(msgspec.Struct, frozen=True):
    group: str
    #: "stable", "reconciling" (partitions still moving) or "empty" (offsets only)
    state: str
    members: int


class ListGroupsReply(_Reply):
    groups: list[GroupListing] = []


class MemberDescription(msgspec.Struct, frozen=True):
    member_id: str
    instance_id: str
    client_host: str
    member_epoch: int
    topics: list[str]
    #: what it owns now (being revoked included)
    assignment: list[TopicPartitions]
    #: owned partitions it was told to give up and has not released yet
    revoking: list[TopicPartitions]
    last_heartbeat_ms_ago: int


class PartitionLag(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    committed: int  # -1: never committed
    high_watermark: int
    lag: int  # high_watermark - committed (from the log start when never committed)
    owner: str = ""  # member id, "" = nobody


class DescribeGroupReply(_Reply):
    group: str = ""
    state: str = ""
    group_epoch: int = 0
    assignor: str = ""
    members: list[MemberDescription] = []
    partitions: list[PartitionLag] = []


class InitProducerIdReply(_Reply):
    producer_id: int = -1


class ErrorReply(_Reply):
    """For a header that cannot be read as a request of this version: not a
    msgpack map, no known ``t``, or another ``v`` (id -1 when even the
    correlation id is unknown).  Every other error is answered in the
    request's own reply type (docs/protocol.md, section 4)."""


Reply = Union[MetadataReply, ProduceReply, FetchReply, ListOffsetsReply, CreateTopicReply, StatsReply, PromoteReply,
              FindCoordinatorReply, GroupHeartbeatReply, OffsetCommitReply, OffsetFetchReply, ListGroupsReply,
              DescribeGroupReply, InitProducerIdReply, TxBeginReply, TxReply, TxListReply, ErrorReply]
REPLY_TYPES: tuple[type, ...] = (MetadataReply, ProduceReply, FetchReply, ListOffsetsReply, CreateTopicReply, StatsReply,
                                 PromoteReply, FindCoordinatorReply, GroupHeartbeatReply, OffsetCommitReply,
                                 OffsetFetchReply, ListGroupsReply, DescribeGroupReply, InitProducerIdReply,
                                 ErrorReply) + TX_REPLY_TYPES

#: The reply type that answers each request type.
REPLY_FOR: dict[type, type] = {
    Metadata: MetadataReply,
    Produce: ProduceReply,
    ProduceMessages: ProduceReply,
    Fetch: FetchReply,
    ListOffsets: ListOffsetsReply,
    CreateTopic: CreateTopicReply,
    Stats: StatsReply,
    Promote: PromoteReply,
    FindCoordinator: FindCoordinatorReply,
    GroupHeartbeat: GroupHeartbeatReply,
    OffsetCommit: OffsetCommitReply,
    OffsetFetch: OffsetFetchReply,
    ListGroups: ListGroupsReply,
    DescribeGroup: DescribeGroupReply,
    InitProducerId: InitProducerIdReply,
    **TX_REPLY_FOR,
}
