"""Helpers for tests and benchmarks of the storage engine (as ``trio.testing``)."""

from __future__ import annotations

from hpbroker import batch as B

_PATTERN = bytes(range(1, 252))  # no zero bytes: a zeroed byte is always a change


def make_batch(n: int = 1, size: int = 100, ts: int = 1_000, tag: int = 0) -> bytes:
    """A valid batch of ``n`` records of ``size`` bytes, all timestamped ``ts``;
    ``tag`` goes into the values so different batches differ."""
    k = tag % 251
    v = (_PATTERN[k:] + _PATTERN[:k]) * (size // 251 + 1)
    v = v[:size]
    return bytes(B.encode_batch([v] * n, timestamp_ms=ts))


def batches(data) -> list[B.BatchHeader]:
    """Headers of the whole batches in ``data``, CRC-checked."""
    out = []
    for pos, _ in B.iter_batches(data):
        out.append(B.check_batch(data, pos, B.peek_length(data, pos)))
    return out


def read_all(log_or_reader, start: int = 0, hw: int | None = None, chunk: int = 1 << 20) -> list[B.BatchHeader]:
    """Every batch from ``start`` up to the high watermark, via repeated reads."""
    out: list[B.BatchHeader] = []
    off = start
    while True:
        if hw is None:
            data = log_or_reader.read(off, chunk)
        else:
            data = log_or_reader.read(off, chunk, hw)
        if not data:
            return out
        hs = batches(data)
        out.extend(h for h in hs if h.last_offset >= off)
        off = hs[-1].last_offset + 1
