"""The Producer's open batches, one per topic-partition, and the sealed queue.

``send()`` appends each message to its partition's open batch
(:meth:`Accumulator.append`).  A batch is sealed

* when the next message would not fit: ``batch_limit()`` is the smaller
  of ``batch_size`` and the broker's ``max_batch_bytes``, header included,
  read as each batch opens;
* when it reaches that limit (the I/O thread is woken at once);
* when it is ``linger`` seconds old, or at once while a flush or close
  hurries (:meth:`Accumulator.take_ready`, on the I/O thread).

Sealed batches wait in send order until the I/O thread takes them; it
encodes each with one ``encode_batch`` call (:meth:`Batch.encode`).  Every
message of a batch shares the batch's one ``concurrent.futures.Future``;
``send`` hands back a :class:`FutureRecordMetadata` holding it and the
message's index.

Not thread-safe by itself: the Producer calls every method with its one lock
held.  No sockets and no clock of its own (``clock`` and ``wall_ms`` are
passed in), so tests/test_client_accumulator.py drives it with a fake one.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable

from hpbroker import batch
from hpbroker.client.records import FutureRecordMetadata


_new_future = object.__new__  # see Accumulator.append
_order = itertools.count()


class OpenBatch:
    """The open batch of one topic-partition (``send()`` appends here).

    ``keys`` and ``ts`` stay None until a message brings a key or an
    explicit timestamp (then they are back-filled), so the common
    value-only send appends to one list.  ``headers`` is sparse, a list of
    ``(index, headers bytes)`` for the messages that have any, filled by
    :meth:`Accumulator.append_with_headers`: a message without headers
    costs :meth:`Accumulator.append` nothing more for it.  ``nbytes``
    starts at the batch header size: it is the encoded size, kept within
    ``limit``."""

    __slots__ = ("values", "keys", "ts", "headers", "future", "nbytes", "limit", "created", "created_ms")

    def __init__(self, limit: int, created: float, created_ms: int):
        self.values: list = []
        self.keys: list | None = None
        self.ts: list | None = None
        self.headers: list[tuple[int, bytes]] | None = None
        self.future = Future()
        self.nbytes = batch.HEADER_SIZE
        self.limit = limit
        self.created = created
        self.created_ms = created_ms


class Batch:
    """One produce request's worth of work: encoded batch frames plus the
    one future to resolve (with the RecordMetadata of its first record).
    ``acc`` holds the raw messages until encoded; ``nbytes`` is what it
    holds of ``buffer_memory``.  ``order`` numbers batches as they are made
    (a partition's batches are made in send order).  ``origin`` is None for
    a batch from ``send``/``send_batch``; a re-send of spilled messages
    carries its :class:`~hpbroker.client.spill_resend.Resend` there instead of a
    future, and holds no ``buffer_memory``.  ``whole`` marks a
    ``send_batch`` batch, whose one future stands for all its records (and
    fails with the first failure) rather than for each message."""

    __slots__ = ("topic", "partition", "frames", "future", "nbytes", "attempts", "acc", "order", "origin", "whole")

    def __init__(self, topic, partition, frames, future, nbytes, acc=None):
        self.topic = topic
        self.partition = partition
        self.frames = frames
        self.future = future
        self.nbytes = nbytes
        self.attempts = 0
        self.acc = acc
        self.order = next(_order)
        self.origin = None
        self.whole = False

    def encode(self) -> None:
        """Build the one frame of a batch sealed from ``send()``'s messages."""
        a = self.acc
        self.acc = None
        hs = None
        if a.headers is not None:
            hs = [None] * len(a.values)
            for i, blob in a.headers:
                hs[i] = blob
        self.frames = [batch.encode_batch(a.values, a.keys, timestamp_ms=a.created_ms, timestamps_ms=a.ts, headers=hs)]


class Accumulator:
    """Open batches by topic-partition, and the sealed ones in send order.

    ``on_open()`` runs as a batch opens (the Producer counts it as
    unanswered and wakes the I/O thread, whose linger deadline moved);
    ``on_full()`` as one is sealed for size.  Both run with the lock held.
    ``flushing`` (a count of flush() calls waiting) and ``closed`` make
    :meth:`take_ready` seal every open batch at once.  ``outstanding``,
    when the Producer sets it (a producer with a spill journal), counts the
    batches of each (topic, partition) from opening until the I/O thread
    answers them: a partition's spilled messages are re-sent only once it
    has none."""

    def __init__(self, batch_limit: Callable[[], int], linger: float, on_open: Callable[[], None],
                 on_full: Callable[[], None], *, clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = batch.now_ms):
        self.batch_limit = batch_limit
        self.linger = linger
        self._on_open = on_open
        self._on_full = on_full
        self._clock = clock
        self._wall_ms = wall_ms
        self.open: dict[tuple[str, int], OpenBatch] = {}
        self._by_topic: dict[str, dict[int, OpenBatch]] = {}  # the same batches, for append()'s lookup
        self.sealed: deque[Batch] = deque()
        self.flushing = 0
        self.closed = False
        self.outstanding: dict[tuple[str, int], int] | None = None

    def append(self, topic: str, partition: int, value: bytes, key: bytes | None, timestamp_ms: int | None,
               size: int) -> FutureRecordMetadata:
        """Add one message of ``size`` encoded bytes (its value, key and
        record-table entry) to the partition's open batch.  This is the
        per-message path of ``Producer.send``: a few list appends, and the
        message's future made without a Python ``__init__`` call (that frame
        alone cost about 5% of a ``send``, measured with cachegrind)."""
        by_part = self._by_topic.get(topic)
        acc = by_part.get(partition) if by_part is not None else None
        if acc is None or acc.nbytes + size > acc.limit:
            acc = self._open_batch(topic, partition, acc)
        values = acc.values
        i = len(values)
        values.append(value)
        if key is not None or acc.keys is not None:
            if acc.keys is None:
                acc.keys = [None] * i
            acc.keys.append(key)
        if timestamp_ms is not None or acc.ts is not None:
            if acc.ts is None:
                acc.ts = [acc.created_ms] * i
            acc.ts.append(acc.created_ms if timestamp_ms is None else timestamp_ms)
        acc.nbytes += size
        if acc.nbytes >= acc.limit:
            self._seal((topic, partition), acc)
            self._on_full()
        fut = _new_future(FutureRecordMetadata)  # = FutureRecordMetadata(acc.future, i)
        fut._batch = acc.future
        fut._index = i
        return fut

    def append_with_headers(self, topic: str, partition: int, value: bytes, key: bytes | None,
                            timestamp_ms: int | None, size: int, headers: bytes) -> FutureRecordMetadata:
        """:meth:`append` for a message with headers (``headers`` is its
        encoded headers bytes, already counted in ``size``).  The message
        lands where :meth:`append` put it: its partition's open batch, or,
        when that filled up with it, the batch it sealed last."""
        fut = self.append(topic, partition, value, key, timestamp_ms, size)
        acc = self.open.get((topic, partition))
        if acc is None or acc.future is not fut._batch:
            acc = self.sealed[-1].acc
        if acc.headers is None:
            acc.headers = []
        acc.headers.append((fut._index, headers))
        return fut

    def seal_partition(self, topic: str, partition: int) -> None:
        """Seal the partition's open batch, if any (``send_batch`` goes after it)."""
        acc = self.open.get((topic, partition))
        if acc is not None:
            self._seal((topic, partition), acc)

    def take_partitions(self, tps: set) -> list[Batch]:
        """Seal the open batches of the (topic, partition)s in ``tps`` and take
        every sealed batch of theirs out of the queue (the others keep their
        order): a spilling producer moves them to its journal."""
        for tp in tps:
            acc = self.open.get(tp)
            if acc is not None:
                self._seal(tp, acc)
        taken = [b for b in self.sealed if (b.topic, b.partition) in tps]
        if taken:
            kept = [b for b in self.sealed if (b.topic, b.partition) not in tps]
            self.sealed.clear()
            self.sealed.extend(kept)
        return taken

    def push(self, b: Batch) -> None:
        """Queue a batch encoded by the caller (``send_batch``) behind the sealed ones."""
        self.sealed.append(b)
        if self.outstanding is not None:
            tp = (b.topic, b.partition)
            self.outstanding[tp] = self.outstanding.get(tp, 0) + 1

    def take_ready(self, now: float) -> list[Batch]:
        """Seal the open batches whose linger has passed (all of them while
        flushing or closed), and hand over every sealed batch, in order."""
        hurry = self.flushing or self.closed
        for tp, acc in list(self.open.items()):
            if hurry or now >= acc.created + self.linger:
                self._seal(tp, acc)
        ready = list(self.sealed)
        self.sealed.clear()
        return ready

    def next_due(self) -> float | None:
        """When :meth:`take_ready` next has work: 0.0 (now) with sealed
        batches or a hurry, else the oldest open batch's linger end, else
        None (nothing open)."""
        if self.sealed:
            return 0.0
        if not self.open:
            return None
        if self.flushing or self.closed:
            return 0.0
        return min(a.created for a in self.open.values()) + self.linger

    def _open_batch(self, topic: str, partition: int, full: OpenBatch | None) -> OpenBatch:
        """Open a batch for (topic, partition), sealing ``full`` first."""
        tp = (topic, partition)
        if full is not None:
            self._seal(tp, full)
        acc = self.open[tp] = OpenBatch(self.batch_limit(), self._clock(), self._wall_ms())
        self._by_topic.setdefault(topic, {})[partition] = acc
        if self.outstanding is not None:
            self.outstanding[tp] = self.outstanding.get(tp, 0) + 1
        self._on_open()
        return acc

    def _seal(self, tp: tuple[str, int], acc: OpenBatch) -> None:
        del self.open[tp]
        del self._by_topic[tp[0]][tp[1]]
        self.sealed.append(Batch(tp[0], tp[1], None, acc.future, acc.nbytes - batch.HEADER_SIZE, acc))
