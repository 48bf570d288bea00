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

PROTOCOL_VERSION = 1

M = msgspec.Meta

#: A topic name: also a directory name on the broker, hence the strict pattern.
TopicName = Annotated[str, M(min_length=1, max_length=249, pattern=r"^(?!\.\.?$)[A-Za-z0-9._-]+$")]
Partition = Annotated[int, M(ge=0, le=0x7FFFFFFF)]
Acks = Annotated[int, M(ge=-1, le=1)]
TimeoutMs = Annotated[int, M(ge=0, le=1 << 31)]

#: Fetch/ListOffsets ``spec`` values.
EARLIEST = -2
LATEST = -1

#: ProduceMessages ``partition`` meaning "broker picks".
ANY_PARTITION = -1


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", tag=True):
    v: int = PROTOCOL_VERSION


# --------------------------------------------------------------- requests


class _Request(_Message):
    id: int


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
    Long poll: wait up to ``max_wait_ms`` for ``min_bytes``."""

    topic: TopicName
    partition: Partition
    offset: Annotated[int, M(ge=0)]
    max_bytes: Annotated[int, M(ge=1)] = 1 << 20
    max_wait_ms: TimeoutMs = 0
    min_bytes: Annotated[int, M(ge=0)] = 1


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


Request = Union[Metadata, Produce, ProduceMessages, Fetch, ListOffsets, CreateTopic, Stats, Promote]
REQUEST_TYPES: tuple[type, ...] = (Metadata, Produce, ProduceMessages, Fetch, ListOffsets, CreateTopic, Stats, Promote)

# ------------------------------------------------------------------ replies


class _Reply(_Message):
    id: int
    code: int = 0
    message: str = ""


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


class ListOffsetsReply(_Reply):
    offset: int = -1


class CreateTopicReply(_Reply):
    partitions: int = 0


class StatsReply(_Reply):
    stats: dict[str, Union[int, float, str]] = {}


class PromoteReply(_Reply):
    leader_epoch: int = -1


class ErrorReply(_Reply):
    """For a header that cannot be read as a request of this version: not a
    msgpack map, no known ``t``, or another ``v`` (id -1 when even the
    correlation id is unknown).  Every other error is answered in the
    request's own reply type (docs/protocol.md, section 4)."""


Reply = Union[MetadataReply, ProduceReply, FetchReply, ListOffsetsReply, CreateTopicReply, StatsReply, PromoteReply, ErrorReply]
REPLY_TYPES: tuple[type, ...] = (MetadataReply, ProduceReply, FetchReply, ListOffsetsReply, CreateTopicReply, StatsReply,
                                 PromoteReply, ErrorReply)

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
}
