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
PUB stream's ``meta`` frame is a :class:`hpbroker.ipc.replica.FeedMeta` and every
chunk frame holds whole record batches laid end to end, already stamped with
their master offsets and leader epochs, byte for byte what the master's log
holds (usually one chunk per message: what one flush made durable).
"""

from __future__ import annotations

import msgspec

from hpbroker.ipc.replica import VERSION, SlaveAck  # noqa: F401 - SlaveAck is one of ToMaster; VERSION is the protocol's


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


ToMaster = Hello | EpochEnd | CatchUp | SlaveAck
FromMaster = Welcome | Refused | EpochEndReply | CatchUpReply

encoder = msgspec.msgpack.Encoder()
to_master = msgspec.msgpack.Decoder(ToMaster)
from_master = msgspec.msgpack.Decoder(FromMaster)
