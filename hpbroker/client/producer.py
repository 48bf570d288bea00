"""``Producer``: the caller's side - knobs, ``send``, ``send_batch``, ``flush``, ``close``.

The jobs behind it, one module each (docs/client.md, "Producer"):

* :mod:`~hpbroker.client.accumulator` - the open batch of each partition,
  sealed by size or by ``linger_ms``, and the sealed queue;
* :mod:`~hpbroker.client.memory` - the ``buffer_memory`` bound (``send``
  blocks up to ``max_block_ms``, then ``BrokerError(BUSY)``) and the count
  of unanswered batches ``flush`` waits for;
* :mod:`~hpbroker.client.split` - ``send_batch``'s list cut into batches and
  requests within the broker's limits;
* :mod:`~hpbroker.client.sender` - the I/O thread: encoding, the in-flight
  window (:mod:`~hpbroker.client.window`), retries, leader search
  (:mod:`~hpbroker.client.leader`), completions;
* :mod:`~hpbroker.client.waker` - the fd through which callers wake it;
* with ``spill_dir``: :mod:`~hpbroker.client.spill` (the durable journal of
  messages the broker could not take yet) and :mod:`~hpbroker.client.spiller`
  (what goes in, the spill thread, the re-sends), and
  :mod:`~hpbroker.client.spill_send` (``send`` in that mode); the key -> partition
  function of every mode is :mod:`~hpbroker.client.partitioner`'s.

Threads: caller threads touch only the accumulator and the buffer memory,
under the Producer's one lock, and wake the I/O thread when a batch opens
or fills.  The I/O thread owns the zmq sockets.  Each batch has one
``concurrent.futures.Future``; ``send`` returns a light
:class:`FutureRecordMetadata` over it (the batch future plus the message's
index), so the per-message cost is a few list appends under the lock.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Mapping, Sequence

from hpbroker import batch
from hpbroker.client.accumulator import Accumulator, Batch
from hpbroker.client.idempotence import Sequencer
from hpbroker.client.memory import BufferMemory
from hpbroker.client.partitioner import partition_for_key
from hpbroker.client.records import FutureRecordMetadata, attach, join
from hpbroker.client.sender import Sender
from hpbroker.client.spill import SpillJournal
from hpbroker.client.spill_send import SpillSend
from hpbroker.client.split import encode_requests
from hpbroker.client.transport import Transport, client_curve
from hpbroker.client.waker import Waker
from hpbroker.client.xa import Transactional
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import InitProducerId

log = logging.getLogger("hpbroker.client")

_Waker = Waker  # the name tests/test_client_waker.py imports

_ACKS = {"all": -1, "-1": -1, -1: -1, "1": 1, 1: 1, "0": 0, 0: 0}


class Producer(Transactional, SpillSend):
    def __new__(cls, bootstrap: str = "tcp://127.0.0.1:7600", *args, **kwargs):
        """``Producer("zk://HOST:PORT/chroot")`` is a
        :class:`~hpbroker.client.cluster_producer.ClusterProducer`: brokers
        found in ZooKeeper, one Producer per replica set (docs/client.md,
        "Clusters: zk:// URLs")."""
        if cls is Producer and isinstance(bootstrap, str) and bootstrap.strip().startswith("zk://"):
            from hpbroker.client.cluster_producer import ClusterProducer

            return ClusterProducer(bootstrap, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        bootstrap: str = "tcp://127.0.0.1:7600",
        *,
        acks: int | str = 1,
        linger_ms: float = 2,
        batch_size: int = 256 * 1024,
        max_in_flight: int = 5,
        retries: int = 5,
        retry_backoff_ms: int = 100,
        buffer_memory: int = 64 << 20,
        max_block_ms: int = 60_000,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 10_000,
        hwm: int = 10_000,
        block_on_full: bool = True,
        spill_dir: str | os.PathLike | None = None,
        ordered: bool | None = None,
        topic_partitions: Mapping[str, int] | None = None,
        spill_segment_bytes: int = 64 << 20,
        enable_idempotence: bool = False,
        transaction_timeout_ms: int = 60_000,
        transaction_flush_bytes: int = 1 << 20,
        curve_secret_key_file: str | None = None,
        broker_public_key: str | bytes | None = None,
    ):
        if acks not in _ACKS:
            raise ValueError(f"acks must be 0, 1 or 'all', got {acks!r}")
        if enable_idempotence and _ACKS[acks] == 0:
            raise ValueError("enable_idempotence needs acks=1 or 'all': with acks=0 nothing tells a retry is needed")
        if spill_dir is None and not block_on_full:
            raise ValueError("block_on_full=False needs a spill_dir: where send() puts what buffer_memory cannot hold")
        if ordered is None:
            ordered = spill_dir is not None  # a spilling producer keeps each partition's order unless told not to
        if spill_dir is None and ordered:
            raise ValueError("ordered=True needs a spill_dir: where messages wait, in order, while the broker is away")
        if spill_dir is not None and _ACKS[acks] == 0:
            raise ValueError("spill_dir needs acks=1 or 'all': spilled messages leave the journal when acknowledged")
        parts = dict(topic_partitions or {})
        for t, n in parts.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"topic_partitions[{t!r}] must be a partition count >= 1, got {n!r}")
        self.acks = _ACKS[acks]
        self.linger = linger_ms / 1000.0
        self.batch_size = batch_size
        self.max_in_flight = max(1, max_in_flight)
        self.retries = retries
        self.retry_backoff = retry_backoff_ms / 1000.0
        self.buffer_memory = buffer_memory
        self.max_block = max_block_ms / 1000.0
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.block_on_full = block_on_full
        self.transaction_timeout_ms = transaction_timeout_ms
        self.transaction_flush_bytes = transaction_flush_bytes
        self._bootstrap = bootstrap
        self.ordered = ordered
        curve = client_curve(curve_secret_key_file, broker_public_key)  # a bad key file: ValueError before any thread
        self._t = Transport(bootstrap, request_timeout_ms=request_timeout_ms, hwm=hwm, curve=curve)
        self._lock = threading.Lock()
        self._waker = _Waker()
        self._memory = BufferMemory(self._lock, buffer_memory, self.max_block)
        self._accum = Accumulator(lambda: min(self.batch_size, self._t.max_batch_bytes), self.linger,
                                  on_open=self._batch_opened, on_full=self._waker.wake)
        self._append = self._accum.append
        sequencer = None
        if enable_idempotence:
            try:
                sequencer = Sequencer(self._init_producer_id)
            except BaseException:
                self._waker.close()
                self._t.close()
                raise
        self.enable_idempotence = enable_idempotence
        self._sender = Sender(self._t, self._waker, self._lock, self._accum, self._memory, acks=self.acks,
                              max_in_flight=self.max_in_flight, retries=retries, retry_backoff=self.retry_backoff,
                              request_timeout_ms=request_timeout_ms, connect_timeout_ms=connect_timeout_ms,
                              ordered=ordered, sequencer=sequencer)
        self._sequencer = sequencer
        self._partitions = self._sender.partitions  # topic -> partition count, filled by the I/O thread
        self._partitions.update(parts)  # configured counts win: the I/O thread never asks for these
        self._rr = itertools.count()
        self._closed = False
        self._thread = self._memory.io_thread = self._sender.thread
        self._spill = None
        if spill_dir is not None:
            try:
                self._open_spill(spill_dir, spill_segment_bytes)
            except BaseException:  # JournalLocked, JournalCorrupt, OSError: nothing was started
                self._waker.close()
                self._t.close()
                raise
        self._sender.start()
        if self._spill is not None:
            self._spill.start()

    def _open_spill(self, spill_dir, segment_bytes: int) -> None:
        from hpbroker.client.spiller import Spiller  # only a producer with a spill_dir loads these

        journal = SpillJournal(spill_dir, segment_bytes=segment_bytes)
        try:
            self._spill = Spiller(journal, self._lock, self._memory, partitions=self._partitions,
                                  lookup=self._sender.lookup, wake_io=self._waker.wake,
                                  batch_limit=lambda: min(self.batch_size, self._t.max_batch_bytes))
        except BaseException:
            journal.close()
            raise
        self._sender.spill = self._spill
        self._accum.outstanding = {}
        if journal.recovered:
            log.warning("producer: %d unacknowledged messages in the spill journal %s from an earlier run; "
                        "re-sending them first", journal.recovered, journal.directory)

    def _init_producer_id(self) -> int:
        """A new producer id from the broker (the constructor's thread, then
        only the I/O thread's).  Raises BrokerError."""
        t = self._t
        if not t.acceptors:
            t.metadata([], timeout_ms=self.connect_timeout_ms)
        rep, _ = t.call(t.acceptors[0], InitProducerId(id=t.next_id()), timeout_ms=self.connect_timeout_ms)
        return rep.producer_id

    @property
    def producer_id(self) -> int:
        """The id an idempotent producer stamps on its batches now; -1 when not idempotent."""
        return -1 if self._sequencer is None else self._sequencer.producer_id

    # -- public API (any thread) ---------------------------------------------------------

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
             timestamp_ms: int | None = None, callback=None, *,
             headers: Sequence[tuple[str, bytes]] | None = None) -> FutureRecordMetadata:
        """Queue one message; the future resolves to its RecordMetadata.
        ``callback(metadata, exception)`` runs on the I/O thread when done.

        ``value`` and ``key`` are bytes (a bytearray or memoryview is
        copied); anything else raises TypeError here, not in the I/O thread.
        ``headers`` is a list of ``(name: str, value: bytes)`` pairs, as in
        kafka-python; a malformed one raises TypeError or ValueError here
        too (``hpbroker.batch.encode_headers``).  Consumers read them back
        with ``hpbroker.batch.decode_headers(message.headers)``."""
        if self._xa is not None:  # between tpc_begin and its end: the message joins the XA branch
            return self._xa.send(topic, value, key, partition, headers=headers)
        if value.__class__ is not bytes:
            value = _as_bytes(value, "value")
        size = len(value) + _ENTRY
        if key is not None:
            if key.__class__ is not bytes:
                key = _as_bytes(key, "key")
            size += len(key)
        if self._spill is not None:
            return self._send_spill_mode(topic, value, key, partition, timestamp_ms, callback, headers, size)
        if headers is not None:  # the one test a message without headers pays
            return self._send_with_headers(topic, value, key, partition, timestamp_ms, callback, headers, size)
        n = self._partitions.get(topic) or self._partitions_for(topic)
        if partition is None:
            partition = partition_for_key(key, n) if key is not None else next(self._rr) % n
        mem = self._memory
        with self._lock:
            if mem.used + size > mem.limit or mem.closed:
                mem.reserve(size)
            else:
                mem.used += size
            fut = self._append(topic, partition, value, key, timestamp_ms, size)
            if callback is not None:
                attach(fut, callback)  # under the lock: the I/O thread cannot have taken the batch yet
        return fut

    def send_batch(self, topic: str, values: Sequence[bytes], partition: int | None = None,
                   keys: Sequence[bytes | None] | None = None, timestamp_ms: int | None = None,
                   callback=None, *, headers: Sequence[Sequence[tuple[str, bytes]] | None] | None = None
                   ) -> FutureRecordMetadata:
        """Send a list of values to one partition (round robin when not
        given) as one request; the future resolves to the RecordMetadata of
        the first, and the others follow at contiguous offsets.  A list
        larger than the broker's batch limit is split into several batches
        of the same request; one larger than the request limit goes as
        several requests (still in order, but then not guaranteed
        contiguous).

        ``headers``, when given, is as long as ``values``: for each record
        its list of ``(name, value)`` pairs (as :meth:`send` takes) or None.
        They are checked here; the same list object given for many records
        is encoded once."""
        if self._xa is not None:
            return self._xa.send_batch(topic, values, partition, keys, headers=headers)
        if not len(values):
            raise ValueError("send_batch needs at least one value")
        blobs = None if headers is None else _encode_each(headers, len(values))
        if self._spill is not None:
            return self._send_batch_spill_mode(topic, values, partition, keys, timestamp_ms, callback, blobs)
        n = self._partitions.get(topic) or self._partitions_for(topic)
        if partition is None:
            partition = next(self._rr) % n
        requests = encode_requests(values, keys, timestamp_ms, self._t.max_batch_bytes, self._t.max_request_bytes,
                                   headers=blobs)
        whole: Future = Future()
        fut = FutureRecordMetadata(whole, 0)
        if callback is not None:
            attach(fut, callback)
        parts = [Future() for _ in requests] if len(requests) > 1 else [whole]
        if len(parts) > 1:
            join(whole, parts)
        with self._lock:
            self._accum.seal_partition(topic, partition)  # keep send order within the partition
            for frames, f in zip(requests, parts):
                nbytes = sum(map(len, frames))
                self._memory.reserve(nbytes)
                b = Batch(topic, partition, frames, f, nbytes)
                b.whole = True
                self._accum.push(b)
                self._memory.batches += 1
        self._waker.wake()
        return fut

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._partitions.get(topic) or self._partitions_for(topic)))

    def _follow(self, bootstraps: list[str]) -> None:
        """Use these broker URLs from now on and ask them which one leads
        (any thread: a ClusterProducer calls it when ZooKeeper shows its
        replica set changed).  Batches wait for the answer as after a
        NOT_LEADER."""
        self._t.bootstraps = list(bootstraps)  # replaced whole: Transport.discover works on a copy
        self._sender._leader.want()
        self._waker.wake()

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait until all of it is acknowledged
        or failed; BrokerError(REQUEST_TIMED_OUT) after ``timeout`` s."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush() from a producer callback would deadlock")
        with self._lock:
            self._accum.flushing += 1
        self._waker.wake()
        try:
            with self._lock:
                done = self._memory.wait_idle(timeout)
                left = self._memory.batches
        finally:
            with self._lock:
                self._accum.flushing -= 1
        if not done:
            more = f" and {self._memory.spilled} spilled messages" if self._spill is not None else ""
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT,
                              f"flush: {left} batches{more} still unacknowledged after {timeout}s")

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the I/O thread; whatever is still unacknowledged
        after ``timeout`` fails with BROKER_SHUTTING_DOWN.  With a
        ``spill_dir`` it is put in the spill journal instead (the futures
        still fail, saying so) and a flush that timed out does not raise:
        the next Producer on that directory sends it."""
        if self._closed:
            return
        try:
            if self._thread.is_alive():
                self.flush(timeout)
        except BrokerError as e:
            if self._spill is None or e.code != ErrorCode.REQUEST_TIMED_OUT:
                raise
            log.warning("producer: close: %s; what is left goes to the spill journal %s", e.message,
                        self._spill.directory)
        finally:
            self._closed = True
            self._close_transactions()
            self._sender.stop()
            if self._spill is not None:
                self._spill.close()
            self._waker.close()

    def metrics(self) -> dict:
        """A snapshot of the producer's counters (docs/client.md,
        "Producer.metrics()"): buffer use, unanswered batches and, with a
        ``spill_dir``, what was spilled, synced, re-sent and is pending."""
        with self._lock:
            mem = self._memory
            out = {"buffer_used_bytes": mem.used, "buffer_memory": mem.limit, "unacked_batches": mem.batches}
            if self._spill is not None:
                out.update(self._spill.metrics())
        return out

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- caller-thread helpers ------------------------------------------------------------

    def _send_with_headers(self, topic: str, value: bytes, key: bytes | None, partition: int | None,
                           timestamp_ms: int | None, callback, headers, size: int) -> FutureRecordMetadata:
        """The rest of :meth:`send` for a message given ``headers``: the same
        steps, plus the headers encoded (and checked) here, counted in the
        message's size (so in ``buffer_memory`` and the batch size), and
        kept with it by ``Accumulator.append_with_headers``.  Apart so that
        :meth:`send` without headers runs exactly the code it did before."""
        blob = batch.encode_headers(headers)
        if blob is not None:
            size += len(blob)
        n = self._partitions.get(topic) or self._partitions_for(topic)
        if partition is None:
            partition = partition_for_key(key, n) if key is not None else next(self._rr) % n
        mem = self._memory
        with self._lock:
            if mem.used + size > mem.limit or mem.closed:
                mem.reserve(size)
            else:
                mem.used += size
            return self._append_locked(topic, partition, value, key, timestamp_ms, size, blob, callback)

    def _append_locked(self, topic, partition, value, key, timestamp_ms, size, blob, callback):
        """One message into its open batch (the lock held, its memory counted),
        with its encoded headers when it has any; ``callback`` attached."""
        if blob is None:
            fut = self._append(topic, partition, value, key, timestamp_ms, size)
        else:
            fut = self._accum.append_with_headers(topic, partition, value, key, timestamp_ms, size, blob)
        if callback is not None:
            attach(fut, callback)
        return fut

    def _batch_opened(self) -> None:
        """A batch opened (lock held): it is unanswered from now, and the I/O
        thread has a new linger deadline."""
        self._memory.batches += 1
        self._waker.wake()

    def _partitions_for(self, topic: str) -> int:
        if self._closed or self._memory.closed:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
        if threading.current_thread() is self._thread:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} is not known yet (cannot look it up from a callback)")
        fut = self._sender.lookup(topic)
        try:
            return fut.result(self.max_block)
        except FutureTimeout:
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"no metadata for {topic!r} within max_block_ms") from None


_ENTRY = batch.ENTRY_SIZE


def _encode_each(headers, n: int) -> list | None:
    """``send_batch``'s per-record headers, encoded: a list of n blobs (or
    None for each record without), or None when no record has any."""
    if not isinstance(headers, (list, tuple)):
        raise TypeError("headers must be a list with one list of (name, value) pairs or None per record, "
                        f"got {type(headers).__name__}")
    if len(headers) != n:
        raise ValueError(f"headers has {len(headers)} entries for {n} values; "
                         "give one list of pairs or None per record")
    blobs = []
    last = last_blob = None
    for i, h in enumerate(headers):
        if h is not last:
            last = h
            try:
                last_blob = batch.encode_headers(h)
            except (TypeError, ValueError) as e:
                raise type(e)(f"record {i}: {e}") from None
        blobs.append(last_blob)
    return blobs if any(b is not None for b in blobs) else None


def _as_bytes(v, what: str) -> bytes:
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)  # a copy: the caller may reuse its buffer before the batch is encoded
    raise TypeError(f"{what} must be bytes, got {type(v).__name__}")
