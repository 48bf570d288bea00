"""Committed offsets as records of the internal topic ``__consumer_offsets``.

The broker store keeps no file of its own: a commit is one record batch
appended to partition ``crc32(group) % N`` of ``__consumer_offsets`` by the
ordinary produce path (ring, writer, group commit, fdatasync, and in sync
replication the slave's ack, since it is produced with acks=all).  So the
existing log, recovery and replication carry the offsets, as Kafka's
``__consumer_offsets`` does; the coordinator's table is only a cache of the
last record of each key, rebuilt by reading the partition.

One record per committed partition; a commit of several partitions is one
batch, so it is written whole or not at all:

=========  ===================================================================
part       content
=========  ===================================================================
key        msgpack array ``[group: str, topic: str, partition: int]``
value      msgpack map ``{"o": next offset, "m": metadata str,
           "e": member epoch, "t": commit time in ms}``
=========  ===================================================================

A later record of the same key replaces an earlier one.  (Compaction is not
built yet: the topic is exempt from retention so no offset ever expires, and
it grows by one record per changed partition per commit; see docs/consumer.md.)
"""

from __future__ import annotations

import zlib
from typing import Iterable, Iterator, NamedTuple

import msgspec

from hpbroker import batch

TOPIC = "__consumer_offsets"

_enc = msgspec.msgpack.Encoder()
_key_dec = msgspec.msgpack.Decoder(tuple[str, str, int])


class _Value(msgspec.Struct, frozen=True):
    o: int
    m: str = ""
    e: int = -1
    t: int = -1


_val_dec = msgspec.msgpack.Decoder(_Value)


class Committed(NamedTuple):
    offset: int
    metadata: str
    timestamp_ms: int


def partition_for(group: str, partitions: int) -> int:
    """The ``__consumer_offsets`` partition that holds ``group``'s offsets
    (and so, which acceptor coordinates it)."""
    return zlib.crc32(group.encode()) % partitions


def encode_commit(group: str, offsets: Iterable[tuple[str, int, int, str]], member_epoch: int,
                  now_ms: int) -> bytearray:
    """One batch for one commit: ``offsets`` are (topic, partition, offset, metadata)."""
    keys, values = [], []
    for topic, partition, offset, metadata in offsets:
        keys.append(_enc.encode((group, topic, partition)))
        values.append(_enc.encode({"o": offset, "m": metadata, "e": member_epoch, "t": now_ms}))
    return batch.encode_batch(values, keys, timestamp_ms=now_ms)


def decode_records(data) -> Iterator[tuple[str, str, int, Committed]]:
    """(group, topic, partition, Committed) for every record of the batches
    in ``data`` (whole batches, as a fetch returns them)."""
    mv = memoryview(data)
    for pos, h in batch.iter_batches(mv):
        table, starts = batch.value_bounds(mv, pos, h)
        for s, k, v in zip(starts.tolist(), table["key_len"].tolist(), table["value_len"].tolist()):
            if k <= 0:
                continue  # not ours: skip rather than fail the whole load
            try:
                group, topic, partition = _key_dec.decode(mv[s:s + k])
                val = _val_dec.decode(mv[s + k:s + k + v])
            except msgspec.DecodeError:
                continue
            yield group, topic, partition, Committed(val.o, val.m, val.t)
