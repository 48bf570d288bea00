"""Control messages between the supervisor and its children.

Children talk to the supervisor over one ``ipc://`` ROUTER (request and
reply); the supervisor pushes cluster-view changes to acceptors over an
``ipc://`` PUB.  These are rare, small messages, so they are msgpack
structs with a ``t`` tag, like the client protocol.
"""

from __future__ import annotations

import msgspec


class _Msg(msgspec.Struct, frozen=True, tag_field="t", kw_only=True):
    pass


class WriterReady(_Msg, tag="writer_ready"):
    writer: int
    pid: int
    pub_endpoint: str = ""  # a master's writer: where it publishes its rounds to slaves


class WriterPublishing(_Msg, tag="writer_publishing"):
    """A slave's writer, promoted, has bound its PUB socket for the new slaves."""

    writer: int
    endpoint: str


class AcceptorHello(_Msg, tag="acceptor_hello"):
    acceptor: int
    pid: int
    endpoint: str
    ack_endpoint: str = ""  # replicated brokers: where slaves' writers report their durable offsets


class EnsureTopic(_Msg, tag="ensure_topic"):
    """Create ``name`` if it does not exist.  ``partitions`` 0 means the
    default; ``explicit`` False means an auto-create on first use (refused
    when auto-create is off); ``if_not_exists`` False makes an existing
    topic an error."""

    name: str
    partitions: int = 0
    explicit: bool = False
    if_not_exists: bool = True


class SeenEpoch(_Msg, tag="seen_epoch"):
    """Slave replicator: a master's epoch it has seen (remembered, so that a
    promotion moves past it) and, once its history is accepted, follows
    (``following``: its epoch becomes one of this broker's reigns, and its
    id the leader metadata names)."""

    epoch: int
    master_id: int
    following: bool = True


class ReplicatorReady(_Msg, tag="replicator_ready"):
    pid: int
    endpoints: list[str]  # master: [fetch, ack]; slave: []


class TextListenerReady(_Msg, tag="text_ready"):
    """The text listener (MetaQ's text protocol) is listening on ``port``."""

    pid: int
    port: int


class Promote(_Msg, tag="promote"):
    """Acceptor -> supervisor: a client asked this slave to become master."""


class ClusterView(_Msg, tag="view"):
    cluster_id: str
    broker_id: int
    leader_epoch: int
    acceptors: list[str]
    topics: dict[str, int]
    role: str = "standalone"
    leader_id: int = 0
    replication: list[str] = []
    replication_acks: list[str] = []  # a master's acceptors' slave-ack endpoints, by acceptor
    promoted_from: str = ""  # the master it followed, while a promotion holds (hpbroker.broker.role)
    cluster_map: bytes = b""  # cluster mode: protocol.messages.ClusterMap, msgpack (b"": none yet or not a cluster)


class TopicResult(_Msg, tag="topic_result"):
    code: int
    message: str
    view: ClusterView | None = None


class Ack(_Msg, tag="ack"):
    code: int = 0
    message: str = ""
    epoch: int = -1


ToSupervisor = (WriterReady | WriterPublishing | AcceptorHello | EnsureTopic | SeenEpoch | ReplicatorReady | Promote
                | TextListenerReady)
FromSupervisor = ClusterView | TopicResult | Ack

encoder = msgspec.msgpack.Encoder()
to_supervisor = msgspec.msgpack.Decoder(ToSupervisor)
from_supervisor = msgspec.msgpack.Decoder(FromSupervisor)
