"""Replication wire messages between a master's and a slave's replicators.

Sockets (the master binds, the slave connects):

==============  ==================  =======================================
master          slave               carries
==============  ==================  =======================================
PUB             SUB                 each round's batches: [b"B", meta, chunk...]
ROUTER          DEALER              Hello/Welcome, EpochEnd, CatchUp (+ data)
PULL            PUSH                SlaveAck: the slave's durable offsets
acceptor PULL   writer PUSH         SlaveAck after each of the slave
                                    writer's flushes (the fast path that
                                    releases acks=all)
==============  ==================  =======================================

Headers are msgpack maps with a ``t`` tag, like the client protocol.  The
PUB stream's ``meta`` frame is ``[topic, partition, master_hwm]`` and every
chunk frame holds whole record batches laid end to end, already stamped with
their master offsets and leader epochs, byte for byte what the master's log
holds (usually one chunk per message: what one flush made durable).
"""

from __future__ import annotations

import msgspec


class _Msg(msgspec.Struct, frozen=True, tag_field="t", kw_only=True):
    v: int = 1


class Hello(_Msg, tag="Hello"):
    """Slave -> master, first thing and then as a keep-alive."""

    cluster_id: str
    slave_id: int
    max_epoch: int


class Welcome(_Msg, tag="Welcome"):
    cluster_id: str
    master_id: int
    epoch: int
    topics: dict[str, int]
    hwm: dict[str, int]
    reigns: list[int] = []  # every epoch the master led or followed (broker-state.json)


class Refused(_Msg, tag="Refused"):
    reason: str


class EpochEnd(_Msg, tag="EpochEnd"):
    """For each (topic, partition, epoch): where does that epoch end on the master?"""

    asks: list[tuple[str, int, int]]


class EpochEndReply(_Msg, tag="EpochEndReply"):
    """(topic, partition, epoch found, end offset, error message or "")."""

    answers: list[tuple[str, int, int, int, str]]


class CatchUp(_Msg, tag="CatchUp"):
    topic: str
    partition: int
    offset: int
    max_bytes: int


class CatchUpReply(_Msg, tag="CatchUpReply"):
    """Followed by one frame of whole batches (possibly empty)."""

    topic: str
    partition: int
    offset: int
    hwm: int
    error: str = ""


class SlaveAck(_Msg, tag="SlaveAck"):
    slave_id: int
    epoch: int
    durable: dict[str, int]


ToMaster = Hello | EpochEnd | CatchUp | SlaveAck
FromMaster = Welcome | Refused | EpochEndReply | CatchUpReply

encoder = msgspec.msgpack.Encoder()
to_master = msgspec.msgpack.Decoder(ToMaster)
from_master = msgspec.msgpack.Decoder(FromMaster)
#: MetadataReply.replication_version this release speaks: 2 = [fetch, ack, pub
#: of each writer] plus replication_acks, PUB frames are chunks of whole
#: batches; 1 = the same endpoints, one batch per PUB frame, no
#: replication_acks; 0 (absent) = [pub, fetch, ack].
VERSION = 3

#: PUB frame 1: topic, partition, the end offset of the batches that follow (the
#: master's log end when the round started; its high watermark once the round is durable)
feed_meta = msgspec.msgpack.Decoder(tuple[str, int, int])
#: writer -> replicator, at most every writer_report_ms: (topic, partition, hwm, bytes published) for each
#: partition whose published rounds finished since the previous note
published_meta = msgspec.msgpack.Decoder(list[tuple[str, int, int, int]])


class ReplicaState(msgspec.Struct, frozen=True):
    """Replicator -> its own broker's acceptors (ipc PUB), on every change.

    master: ``insync`` slaves and, per partition, the offset every in-sync
    slave has made durable (``replicated``); ``stats`` for the stats
    command, or None when they did not change enough to resend (a master
    resends them every 200 ms and when the in-sync slaves change).  slave:
    ``insync`` is 0 and ``stats`` says how it follows.
    """

    role: str
    insync: int
    replicated: dict[str, int]
    stats: dict[str, int | float | str] | None = None
    #: master: the broker ids of the in-sync slaves; their writers' direct
    #: reports (SlaveAck to the acceptors, same epoch) count, nobody else's.
    insync_ids: list[int] = []


state_encoder = msgspec.msgpack.Encoder()
state_decoder = msgspec.msgpack.Decoder(ReplicaState)
