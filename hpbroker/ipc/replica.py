"""What replication tells the rest of a broker, and what slave writers tell a master.

These messages cross process boundaries inside one broker (replicator ->
acceptors, writer -> replicator) or go from a slave's writers straight to a
master's acceptors, so the writer, the acceptor and the replicator all
speak them.  The messages between two replicators stay in
:mod:`hpbroker.replication.messages`.

====================  =============================  =========================
message               from -> to                     socket
====================  =============================  =========================
:class:`ReplicaState` replicator -> own acceptors    ipc PUB/SUB, on change
:class:`SlaveAck`     slave replicator -> master's   tcp PUSH/PULL
                      replicator, and slave writer
                      -> master's acceptors
:class:`FeedMeta`     master writer -> slaves        frame 1 of each PUB message
:class:`Published`    master writer -> replicator    ipc PUSH/PULL, a list
====================  =============================  =========================
"""

from __future__ import annotations

import msgspec

#: MetadataReply.replication_version this release speaks: 3 = [fetch, ack, pub
#: of each writer] plus replication_acks, PUB frames are chunks of whole
#: batches; 1 = the same endpoints, one batch per PUB frame, no
#: replication_acks; 0 (absent) = [pub, fetch, ack].
VERSION = 3


class SlaveAck(msgspec.Struct, frozen=True, tag_field="t", tag="SlaveAck", kw_only=True):
    """What a slave has made durable, per ``"topic/partition"``, as slave
    ``slave_id`` of the master of leader epoch ``epoch``.  Tagged like the
    replicators' messages, so it is one of :data:`hpbroker.replication.messages.ToMaster`."""

    v: int = 1
    slave_id: int
    epoch: int
    durable: dict[str, int]


class FeedMeta(msgspec.Struct, array_like=True, frozen=True):
    """Frame 1 of a PUB message; the frames after it hold whole batches laid
    end to end, already stamped.  ``end_offset`` is the master's log end when
    the round started (its high watermark once the round is durable)."""

    topic: str
    partition: int
    end_offset: int


class Published(msgspec.Struct, array_like=True, frozen=True):
    """One partition of a master writer's note to its replicator, sent at most
    every ``replication.writer_report_ms``: what its published rounds made
    durable since the previous note (for the slaves' lag in bytes)."""

    topic: str
    partition: int
    hwm: int
    nbytes: int


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


encoder = msgspec.msgpack.Encoder()
state_decoder = msgspec.msgpack.Decoder(ReplicaState)
slave_ack_decoder = msgspec.msgpack.Decoder(SlaveAck)
feed_meta_decoder = msgspec.msgpack.Decoder(FeedMeta)
published_decoder = msgspec.msgpack.Decoder(list[Published])
