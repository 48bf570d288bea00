"""What the client hands back: produce results and consumed messages."""

from __future__ import annotations

from concurrent.futures import Future
from typing import NamedTuple


class RecordMetadata(NamedTuple):
    """Where a produced message (or the first of a ``send_batch``) landed.
    ``offset`` is -1 with acks=0."""

    topic: str
    partition: int
    offset: int


class Message(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int
    headers: bytes | None = None


class RawBatches(NamedTuple):
    """``Consumer.poll_batches`` output for one partition: whole record
    batches as received (hpbroker.batch format, laid end to end).

    ``record_count`` counts every record in ``data``; the first batch may
    start before the consumer's position when the fetch started in the
    middle of a batch: skip ``start_offset - base_offset`` records."""

    partition: int
    data: memoryview
    record_count: int
    base_offset: int
    start_offset: int


class FutureRecordMetadata(Future):
    """A ``concurrent.futures.Future`` resolving to :class:`RecordMetadata`
    or raising :class:`hpbroker.BrokerError`, with kafka-python's
    ``get``/``add_callback``/``add_errback``.  Callbacks run on the
    producer's I/O thread: keep them short and never call ``flush`` from
    one."""

    def get(self, timeout: float | None = None) -> RecordMetadata:
        return self.result(timeout)

    def add_callback(self, fn, *args, **kwargs) -> "FutureRecordMetadata":
        def cb(f):
            if not f.cancelled() and f.exception() is None:
                fn(*args, f.result(), **kwargs)

        self.add_done_callback(cb)
        return self

    def add_errback(self, fn, *args, **kwargs) -> "FutureRecordMetadata":
        def cb(f):
            if not f.cancelled() and f.exception() is not None:
                fn(*args, f.exception(), **kwargs)

        self.add_done_callback(cb)
        return self
