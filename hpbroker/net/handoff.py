"""What acceptors and writers say to each other.

Bulk bytes go acceptor -> writer through the shared-memory ring; the small
answers (which requests are durable, at which offsets, and each partition's
new high watermark) go writer -> acceptor as one ZeroMQ ``ipc://`` message
per group commit, because the acceptor already sleeps in a ``zmq.Poller``
and a socket wakes it without another thread.  docs/design.md has the why.

Ring record payload (type ``PRODUCE``), little-endian
-----------------------------------------------------

=======  ====  ==============  ===========================================
offset   size  field           notes
=======  ====  ==============  ===========================================
0        8     token  uint64   acceptor-local id of the produce request
8        4     partition int32
12       2     topic_len uint16
14       2     batch_count uint16  batches that follow, laid end to end
16       n     topic           utf-8, then zero padding to a multiple of 8
16+pad   ...   batches         each exactly as the producer sent it
=======  ====  ==============  ===========================================

One ring record carries one whole produce request, so a request is either
entirely in the ring or (when the ring is full) entirely refused.
"""

from __future__ import annotations

import struct
import zlib

import msgspec

PRODUCE = 1

_HEAD = struct.Struct("<QiHH")
HEAD_SIZE = _HEAD.size  # 16


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def record_size(topic_bytes: bytes, batches_bytes: int) -> int:
    return HEAD_SIZE + _pad8(len(topic_bytes)) + batches_bytes


def write_record(buf, token: int, topic_bytes: bytes, partition: int, batches) -> None:
    """Fill ``buf`` (a claimed ring slot of exactly ``record_size`` bytes)."""
    _HEAD.pack_into(buf, 0, token, partition, len(topic_bytes), len(batches))
    tl = len(topic_bytes)
    buf[HEAD_SIZE : HEAD_SIZE + tl] = topic_bytes
    pos = HEAD_SIZE + _pad8(tl)
    buf[HEAD_SIZE + tl : pos] = bytes(pos - HEAD_SIZE - tl)
    for b in batches:
        n = len(b)
        buf[pos : pos + n] = b
        pos += n


def read_record(buf) -> tuple[int, str, int, int, int]:
    """-> (token, topic, partition, batch_count, position of the first batch)."""
    token, partition, tl, count = _HEAD.unpack_from(buf, 0)
    topic = bytes(buf[HEAD_SIZE : HEAD_SIZE + tl]).decode()
    return token, topic, partition, count, HEAD_SIZE + _pad8(tl)


class Completions(msgspec.Struct, array_like=True, frozen=True):
    """Writer -> acceptor after a group commit.

    ``done`` lists ``[token, code, message, base_offsets]`` for this
    acceptor's requests that are now durable (code 0) or failed.  ``hwm``
    maps ``"topic/partition"`` to the new high watermark and
    ``log_start``, the earliest retained offset, for every partition that
    changed.  ``v`` comes first so fields can be added after it.
    """

    v: int
    writer: int
    done: list[tuple[int, int, str, list[int]]]
    hwm: dict[str, int]
    log_start: dict[str, int] = {}


completions_encoder = msgspec.msgpack.Encoder()
completions_decoder = msgspec.msgpack.Decoder(Completions)


def tp_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def owner_of(topic: str, partition: int, writers: int) -> int:
    """The writer that owns a partition: stable across processes and runs
    (zlib.crc32, not Python's salted hash)."""
    return zlib.crc32(f"{topic}/{partition}".encode()) % writers
