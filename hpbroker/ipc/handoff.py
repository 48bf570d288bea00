"""The ring record: what acceptors (and a slave's replicator) hand a writer.

Bulk bytes go acceptor -> writer through the shared-memory ring, one ring
record per request; the answers come back as :mod:`hpbroker.ipc.completions`.
docs/design.md has the why.

Ring record payload, little-endian
----------------------------------

=======  ====  ==============  ===========================================
offset   size  field           notes
=======  ====  ==============  ===========================================
0        8     token  uint64   sender-local id of the request
8        4     partition int32
12       2     topic_len uint16
14       2     batch_count uint16  batches that follow, laid end to end
16       4     epoch  int32    leader epoch to stamp (PRODUCE only)
20       4     reserved        zero
24       8     arg    int64    TRUNCATE: the offset to truncate to
32       n     topic           utf-8, then zero padding to a multiple of 8
32+pad   ...   batches         each exactly as the producer sent it
=======  ====  ==============  ===========================================

Record types (the ring's type id):

* ``PRODUCE`` - an acceptor's produce request: the writer assigns offsets
  and stamps ``epoch``.
* ``REPLICA`` - batches a slave received from its master, already stamped
  with the master's offsets and epochs: the writer appends them unchanged
  and refuses a batch whose base offset is not its log end (a gap).
* ``TRUNCATE`` - a slave cutting its divergent tail back to ``arg`` after
  the epoch handshake with a (new) master; no batches.
* ``ACK_TO`` - a slave's replicator telling its writer where to report each
  flush (the master's acceptors), once the handshake is done, and again with
  no endpoints when it loses the master.  Empty topic, partition 0, one
  "batch": an :class:`AckTo` in msgpack.  Never answered.

One ring record carries one whole request, so a request is either
entirely in the ring or (when the ring is full) entirely refused.
"""

from __future__ import annotations

import struct
import zlib
import msgspec

PRODUCE = 1
REPLICA = 2
TRUNCATE = 3
ACK_TO = 4

_HEAD = struct.Struct("<QiHHi4xq")
HEAD_SIZE = _HEAD.size  # 32


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def record_size(topic_bytes: bytes, batches_bytes: int) -> int:
    return HEAD_SIZE + _pad8(len(topic_bytes)) + batches_bytes


def write_record(buf, token: int, topic_bytes: bytes, partition: int, batches, epoch: int = 0, arg: int = 0) -> None:
    """Fill ``buf`` (a claimed ring slot of exactly ``record_size`` bytes)."""
    _HEAD.pack_into(buf, 0, token, partition, len(topic_bytes), len(batches), epoch, arg)
    tl = len(topic_bytes)
    buf[HEAD_SIZE : HEAD_SIZE + tl] = topic_bytes
    pos = HEAD_SIZE + _pad8(tl)
    buf[HEAD_SIZE + tl : pos] = bytes(pos - HEAD_SIZE - tl)
    for b in batches:
        n = len(b)
        buf[pos : pos + n] = b
        pos += n


def read_record(buf) -> tuple[int, str, int, int, int, int, int]:
    """-> (token, topic, partition, batch_count, epoch, arg, position of the first batch)."""
    token, partition, tl, count, epoch, arg = _HEAD.unpack_from(buf, 0)
    topic = bytes(buf[HEAD_SIZE : HEAD_SIZE + tl]).decode()
    return token, topic, partition, count, epoch, arg, HEAD_SIZE + _pad8(tl)


def put_record(ring, record_type: int, timeout: float, token: int, topic_bytes: bytes, partition: int, batches,
               *, epoch: int = 0, arg: int = 0) -> None:
    """Claim, fill and commit one record in ``ring`` (a ring Writer), whole or
    not at all: what the ring's claim raises (full for ``timeout`` seconds,
    its reader gone) leaves nothing written, and a failed fill is aborted."""
    size = record_size(topic_bytes, sum(len(b) for b in batches))
    buf = ring.claim(size, record_type, timeout)
    try:
        write_record(buf, token, topic_bytes, partition, batches, epoch=epoch, arg=arg)
    except BaseException:
        ring.abort()
        raise
    ring.commit()


class AckTo(msgspec.Struct, array_like=True, frozen=True):
    """The payload of an ``ACK_TO`` record: report flushes to ``endpoints``
    as slave ``slave_id`` of the master of leader epoch ``epoch``."""

    epoch: int
    slave_id: int
    endpoints: list[str]


ack_to_encoder = msgspec.msgpack.Encoder()
ack_to_decoder = msgspec.msgpack.Decoder(AckTo)


def tp_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def owner_of(topic: str, partition: int, writers: int) -> int:
    """The writer that owns a partition: stable across processes and runs
    (zlib.crc32, not Python's salted hash).  A topic's partitions go round
    robin from a start its name picks, so any N consecutive partitions land
    on N different writers (Kafka assigns replicas the same way).  Hashing
    "topic/partition" instead did not spread them: CRC32 is linear, so names
    that differ in one low bit hash to the same parity, and with two writers
    every partition 0-3 of every topic went to one of them."""
    return (zlib.crc32(topic.encode()) + partition) % writers
