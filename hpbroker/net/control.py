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


class AcceptorHello(_Msg, tag="acceptor_hello"):
    acceptor: int
    pid: int
    endpoint: str


class EnsureTopic(_Msg, tag="ensure_topic"):
    """Create ``name`` if it does not exist.  ``partitions`` 0 means the
    default; ``explicit`` False means an auto-create on first use (refused
    when auto-create is off); ``if_not_exists`` False makes an existing
    topic an error."""

    name: str
    partitions: int = 0
    explicit: bool = False
    if_not_exists: bool = True


class ClusterView(_Msg, tag="view"):
    cluster_id: str
    broker_id: int
    leader_epoch: int
    acceptors: list[str]
    topics: dict[str, int]


class TopicResult(_Msg, tag="topic_result"):
    code: int
    message: str
    view: ClusterView | None = None


class Ack(_Msg, tag="ack"):
    pass


ToSupervisor = WriterReady | AcceptorHello | EnsureTopic
FromSupervisor = ClusterView | TopicResult | Ack

encoder = msgspec.msgpack.Encoder()
to_supervisor = msgspec.msgpack.Decoder(ToSupervisor)
from_supervisor = msgspec.msgpack.Decoder(FromSupervisor)
