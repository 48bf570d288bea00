"""``send`` and ``send_batch`` of a Producer with a ``spill_dir``.

:class:`~hpbroker.client.producer.Producer` inherits this part
(docs/client.md, "Spilling to disk").  A message joins its in-memory batch
as without a journal while nothing is spilled and memory has room; it goes
to the spill journal (:mod:`hpbroker.client.spiller`) when its partition
has messages there already, when the broker is down, or when
``buffer_memory`` is full and ``block_on_full`` is False.
"""

from __future__ import annotations

from concurrent.futures import Future

from hpbroker import batch
from hpbroker.client.accumulator import Batch
from hpbroker.client.partitioner import partition_for_key
from hpbroker.client.records import FutureRecordMetadata, attach, join
from hpbroker.client.spill import encode_record
from hpbroker.client.split import encode_requests
from hpbroker.protocol.errors import BrokerError, ErrorCode

_ENTRY = batch.ENTRY_SIZE


class SpillSend:
    """The Producer's sends in spill mode (it provides ``_spill``,
    ``_memory``, ``_lock``, ``_accum``, ``_partitions``, ``_rr``, ``_t``,
    ``_waker``, ``block_on_full`` and ``_append_locked``)."""

    def _send_spill_mode(self, topic: str, value: bytes, key: bytes | None, partition: int | None,
                         timestamp_ms: int | None, callback, headers, size: int) -> FutureRecordMetadata:
        """:meth:`send` with a spill journal (docs/client.md, "Spilling to
        disk").  It never waits for metadata: without the partition count
        the message is spilled with partition -1.  It spills when
        :meth:`Spiller.must_spill` says so (the partition has messages in the
        journal, the broker is down), and when ``buffer_memory`` is full and
        ``block_on_full`` is False; otherwise the message joins its
        in-memory batch as in :meth:`send`."""
        blob = None
        if headers is not None:
            blob = batch.encode_headers(headers)
            if blob is not None:
                size += len(blob)
        if partition is None:
            n = self._partitions.get(topic)
            if n:
                partition = partition_for_key(key, n) if key is not None else next(self._rr) % n
            else:
                partition = -1
        elif partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        spill = self._spill
        mem = self._memory
        if not spill.down and not spill.pending and partition >= 0 and mem.used + size <= mem.limit:
            # the common case, checked again under the lock: nothing spilled, room in memory
            with self._lock:
                if not spill.down and not spill.pending and mem.used + size <= mem.limit and not mem.closed:
                    mem.used += size
                    return self._append_locked(topic, partition, value, key, timestamp_ms, size, blob, callback)
        frame = None
        if spill.likely(topic, partition) or (not self.block_on_full and mem.used + size > mem.limit):
            # frame it before taking the lock (about a microsecond that other senders need not wait for)
            frame = encode_record(False, topic, partition, key, value, blob,
                                  batch.now_ms() if timestamp_ms is None else timestamp_ms)
        with self._lock:
            if mem.closed:
                raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
            if not spill.must_spill(topic, partition):
                room = mem.used + size <= mem.limit or mem.used == 0
                if not room and self.block_on_full:
                    mem.reserve(size)  # waits up to max_block_ms, then BUSY
                    if spill.must_spill(topic, partition):  # the broker went away while we waited
                        mem.unreserve(size)
                    else:
                        return self._append_locked(topic, partition, value, key, timestamp_ms, size, blob, callback)
                elif room:
                    mem.used += size
                    return self._append_locked(topic, partition, value, key, timestamp_ms, size, blob, callback)
            if frame is None:
                frame = encode_record(False, topic, partition, key, value, blob,
                                      batch.now_ms() if timestamp_ms is None else timestamp_ms)
            fut = spill.add(topic, partition, frame, size)
            if callback is not None:
                attach(fut, callback)
        return fut

    def _send_batch_spill_mode(self, topic: str, values, partition: int | None, keys, timestamp_ms: int | None,
                               callback, blobs) -> FutureRecordMetadata:
        """:meth:`send_batch` with a spill journal: one request as usual, or,
        when the partition must spill (or the buffer is full and
        ``block_on_full`` is False), every value spilled in order.  The
        spilled ones share one group: the future resolves once all are
        answered, with the first record's metadata (their offsets need not
        be contiguous), and fails with the first failure."""
        n = self._partitions.get(topic)
        if partition is None:
            partition = next(self._rr) % n if n else -1
        spill = self._spill
        requests = None
        if partition >= 0:
            requests = encode_requests(values, keys, timestamp_ms, self._t.max_batch_bytes,
                                       self._t.max_request_bytes, headers=blobs)
            sizes = [sum(map(len, frames)) for frames in requests]
        with self._lock:
            if self._memory.closed:
                raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
            mem = self._memory
            if requests is not None and not spill.must_spill(topic, partition) and (
                    self.block_on_full or mem.used == 0 or mem.used + sum(sizes) <= mem.limit):
                whole: Future = Future()
                fut = FutureRecordMetadata(whole, 0)
                parts = [Future() for _ in requests] if len(requests) > 1 else [whole]
                if len(parts) > 1:
                    join(whole, parts)
                self._accum.seal_partition(topic, partition)
                for frames, nbytes, f in zip(requests, sizes, parts):
                    mem.reserve(nbytes)
                    b = Batch(topic, partition, frames, f, nbytes)
                    b.whole = True
                    self._accum.push(b)
                    mem.batches += 1
            else:
                g = spill.new_group(topic, partition)
                ts = batch.now_ms() if timestamp_ms is None else timestamp_ms
                for i, v in enumerate(values):
                    k = None if keys is None else keys[i]
                    h = None if blobs is None else blobs[i]
                    size = _ENTRY + len(v) + (0 if k is None else len(k)) + (0 if h is None else len(h))
                    f = spill.add(topic, partition, encode_record(False, topic, partition, k, v, h, ts), size, group=g)
                    if i == 0:
                        fut = f
                spill.end_group(g)
            if callback is not None:
                attach(fut, callback)
        self._waker.wake()
        return fut
