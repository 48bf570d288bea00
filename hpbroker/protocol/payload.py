"""Checks and conversions of produce payloads (sans-IO, for the acceptor).

``Produce`` frames are record batches in the :mod:`hpbroker.batch` format;
``ProduceMessages`` frames are bare values (or key/value pairs) that the
broker turns into one batch.  Both end here as checked batches, or as a
:class:`ProtocolError` carrying MESSAGE_TOO_LARGE or CORRUPT_BATCH.
"""

from __future__ import annotations

from typing import Sequence

from hpbroker import batch
from hpbroker.protocol.errors import ErrorCode, ProtocolError
from hpbroker.protocol.messages import Produce, ProduceMessages


def check_produce(req: Produce, frames: Sequence[memoryview], *, max_batch_bytes: int) -> list[batch.BatchHeader]:
    """Check every batch frame of a Produce (size, layout, CRC32C); one frame
    holds exactly one batch.  Returns the headers, in order."""
    out = []
    for i, f in enumerate(frames):
        if len(f) > max_batch_bytes:
            raise ProtocolError(
                ErrorCode.MESSAGE_TOO_LARGE, f"batch {i} is {len(f)} bytes; the limit is {max_batch_bytes}", req.id
            )
        try:
            out.append(batch.check_batch(f, 0, len(f)))
        except batch.CorruptBatch as e:
            raise ProtocolError(ErrorCode.CORRUPT_BATCH, f"batch {i}: {e}", req.id) from None
    return out


def messages_batch_size(req: ProduceMessages, frames: Sequence[memoryview]) -> int:
    """The size of the batch :func:`build_messages_batch` would build."""
    n = len(frames) // 2 if req.keys else len(frames)
    return batch.HEADER_SIZE + n * batch.ENTRY_SIZE + sum(map(len, frames))


def build_messages_batch(
    req: ProduceMessages, frames: Sequence[memoryview], *, max_batch_bytes: int, timestamp_ms: int | None = None
) -> bytearray:
    """One batch holding the values (and keys) of a ProduceMessages."""
    size = messages_batch_size(req, frames)
    if size > max_batch_bytes:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_LARGE, f"the messages make a {size}-byte batch; the limit is {max_batch_bytes}", req.id
        )
    if req.keys:  # an empty key frame means "no key" (docs/protocol.md)
        keys = [k if len(k) else None for k in frames[0::2]]
        return batch.encode_batch(frames[1::2], keys, timestamp_ms=timestamp_ms)
    return batch.encode_batch(frames, timestamp_ms=timestamp_ms)
