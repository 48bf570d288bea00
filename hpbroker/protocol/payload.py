"""Checks and conversions of produce payloads (sans-IO, for the acceptor).

``Produce`` frames are record batches in the :mod:`hpbroker.batch` format;
``ProduceMessages`` frames are bare values (or key/value pairs) that the
broker turns into one batch.  Both end here as checked batches, or as a
:class:`ProtocolError` carrying MESSAGE_TOO_LARGE, CORRUPT_BATCH or
UNSUPPORTED_COMPRESSION.
"""

from __future__ import annotations

from typing import Sequence

from hpbroker import batch
from hpbroker.protocol.errors import ErrorCode, ProtocolError
from hpbroker.protocol.messages import Produce, ProduceMessages


def check_produce(req: Produce, frames: Sequence[memoryview], *, max_batch_bytes: int) -> list[batch.BatchHeader]:
    """Check every batch frame of a Produce (size, layout, CRC32C, the
    compression bits and reserved fields); one frame holds exactly one batch,
    anything else is CORRUPT_BATCH.  Returns the headers, in order."""
    out = []
    for i, f in enumerate(frames):
        if len(f) > max_batch_bytes:
            raise _error(req, ErrorCode.MESSAGE_TOO_LARGE, f"batch {i} is {len(f)} bytes; the limit is {max_batch_bytes}")
        try:
            h = batch.check_batch(f, 0, len(f))
            batch.check_producer_fields(f, 0, h)
            batch.check_headers(f, 0, h)
        except batch.UnsupportedCompression as e:
            raise _error(req, ErrorCode.UNSUPPORTED_COMPRESSION, f"batch {i}: {e}") from None
        except batch.CorruptBatch as e:
            raise _error(req, ErrorCode.CORRUPT_BATCH, f"batch {i}: {e}") from None
        out.append(h)
    return out


def _error(req, code: int, message: str) -> ProtocolError:
    return ProtocolError(code, message, req.id, kind=type(req).__name__, acks=req.acks)


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
        raise _error(req, ErrorCode.MESSAGE_TOO_LARGE, f"the messages make a {size}-byte batch; the limit is {max_batch_bytes}")
    if req.keys:  # an empty key frame means "no key" (docs/protocol.md)
        keys = [k if len(k) else None for k in frames[0::2]]
        return batch.encode_batch(frames[1::2], keys, timestamp_ms=timestamp_ms)
    return batch.encode_batch(frames, timestamp_ms=timestamp_ms)
