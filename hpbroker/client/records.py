"""What the client hands back: produce results, their futures, and consumed messages."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import NamedTuple


class RecordMetadata(NamedTuple):
    """Where a produced message (or the first of a ``send_batch``) landed.
    ``offset`` is -1 with acks=0."""

    topic: str
    partition: int
    offset: int


class TopicPartition(NamedTuple):
    """One partition of one topic (kafka-python's name)."""

    topic: str
    partition: int


class Message(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int
    headers: list[tuple[str, bytes]] | None = None  # None: the record has no headers


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
    topic: str = ""


class FutureRecordMetadata:
    """The result of one ``Producer.send`` (or of a ``send_batch``): resolves
    to :class:`RecordMetadata` or raises :class:`hpbroker.BrokerError`.

    It has the ``concurrent.futures.Future`` methods a caller uses
    (``result``, ``exception``, ``done``, ``add_done_callback``) plus
    kafka-python's ``get``, ``add_callback`` and ``add_errback``, but it is
    a light view, not a ``Future``: every message of a batch shares the
    batch's one ``Future`` (resolving to the RecordMetadata of the batch's
    first record) and this object only holds that and the message's index,
    so ``send`` allocates no lock or condition per message.  Because of
    that, ``concurrent.futures.wait``/``as_completed`` do not take it; use
    ``result``/``get`` or ``Producer.flush``.

    Callbacks run on the producer's I/O thread (or at once, on the calling
    thread, when the future is already done): keep them short and never
    call ``flush`` from one.  ``cancel`` always fails: a message handed to
    ``send`` is on its way.
    """

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: Future, index: int = 0):
        self._batch = batch
        self._index = index

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """The message's metadata; ``concurrent.futures.TimeoutError`` after
        ``timeout`` seconds, the BrokerError when its batch failed."""
        md = self._batch.result(timeout)
        i = self._index
        if md.__class__ is not RecordMetadata:  # the batch went to the spill journal: each has its own outcome
            out = md.outcome(i)
            if isinstance(out, BaseException):
                raise out
            return out
        if i == 0 or md.offset < 0:
            return md
        return RecordMetadata(md.topic, md.partition, md.offset + i)

    def get(self, timeout: float | None = None) -> RecordMetadata:
        return self.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        e = self._batch.exception(timeout)
        if e is None:
            md = self._batch.result()
            if md.__class__ is not RecordMetadata:  # moved to the spill journal (SpilledFuture's case)
                out = md.outcome(self._index)
                return out if isinstance(out, BaseException) else None
        return e

    def done(self) -> bool:
        return self._batch.done()

    def running(self) -> bool:
        return not self._batch.done()

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def add_done_callback(self, fn) -> None:
        """``fn(this_future)`` once the message's batch is done."""
        self._batch.add_done_callback(lambda _b: fn(self))

    def add_callback(self, fn, *args, **kwargs) -> "FutureRecordMetadata":
        """``fn(*args, metadata, **kwargs)`` on success."""
        def cb(f):
            if f.exception() is None:
                fn(*args, f.result(), **kwargs)

        self.add_done_callback(cb)
        return self

    def add_errback(self, fn, *args, **kwargs) -> "FutureRecordMetadata":
        """``fn(*args, exception, **kwargs)`` on failure."""
        def cb(f):
            exc = f.exception()
            if exc is not None:
                fn(*args, exc, **kwargs)

        self.add_done_callback(cb)
        return self

    def __repr__(self) -> str:
        state = "pending" if not self._batch.done() else ("failed" if self._batch.exception() else "done")
        return f"<FutureRecordMetadata {state} index={self._index}>"


def attach(fut: FutureRecordMetadata, callback) -> None:
    """Run ``callback(metadata, exception)`` once ``fut`` is done (the
    Producer's ``callback=`` argument)."""
    def done(f):
        exc = f.exception()
        callback(None if exc else f.result(), exc)

    fut.add_done_callback(done)


def join(fut: Future, parts: list[Future]) -> None:
    """Resolve ``fut`` with the first part's result once all parts succeed,
    or with the first failure (a ``send_batch`` sent as several requests)."""
    lock = threading.Lock()
    left = [len(parts)]

    def done(_):
        with lock:
            left[0] -= 1
            if left[0]:
                return
        for p in parts:
            if p.exception() is not None:
                fut.set_exception(p.exception())
                return
        fut.set_result(parts[0].result())

    for p in parts:
        p.add_done_callback(done)


class SpilledFuture(FutureRecordMetadata):
    """The future of a message that went to the spill journal
    (docs/client.md, "Spilling to disk").

    Spilled messages are re-sent in batches cut at re-send time, so they
    cannot share a batch's future.  Instead consecutive spilled messages of
    one partition share a *spill group* (``_batch`` is its one Future,
    resolved with the group once every member is answered), and each reads
    its own outcome from the group: its RecordMetadata, or the BrokerError
    that failed it.  A group closes to new members once the producer starts
    re-sending it, so a future completes soon after its message is
    acknowledged.  Same interface as :class:`FutureRecordMetadata`."""

    __slots__ = ()

    def result(self, timeout: float | None = None) -> RecordMetadata:
        out = self._batch.result(timeout).outcome(self._index)
        if isinstance(out, BaseException):
            raise out
        return out

    def exception(self, timeout: float | None = None) -> BaseException | None:
        out = self._batch.result(timeout).outcome(self._index)
        return out if isinstance(out, BaseException) else None

    def __repr__(self) -> str:
        if not self._batch.done():
            return f"<SpilledFuture pending index={self._index}>"
        return f"<SpilledFuture {'failed' if self.exception() else 'done'} index={self._index}>"
