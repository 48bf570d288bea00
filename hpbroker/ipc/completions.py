"""Writer -> acceptor (and replicator): what a group commit made durable.

The small answers to ring records - which requests are durable, at which
offsets, and each partition's new high watermark - go back as one msgpack
message per group commit over a ZeroMQ ``ipc://`` PUSH socket, because the
acceptor already sleeps in a ``zmq.Poller`` and a socket wakes it without
another thread (docs/design.md, "Acceptor -> writer").  This module is the
message only; the sockets live with the processes.
"""

from __future__ import annotations

import msgspec


class Completions(msgspec.Struct, array_like=True, frozen=True):
    """Writer -> acceptor after a group commit.

    ``done`` lists ``[token, code, message, base_offsets, last_offset]``
    for this acceptor's requests that are now durable (code 0) or failed.  ``hwm``
    maps ``"topic/partition"`` to the new high watermark and
    ``log_start``, the earliest retained offset, for every partition that
    changed.  ``v`` comes first so fields can be added after it.
    """

    v: int
    writer: int
    done: list[tuple[int, int, str, list[int], int]]
    hwm: dict[str, int]
    log_start: dict[str, int] = {}


encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(Completions)
