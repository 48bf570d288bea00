"""``Producer``: batches per partition, several requests in flight, futures.

Threads: user threads only touch the accumulator (under one lock) and wake
the I/O thread through an eventfd (a pipe where there is none) registered
in the transport's ``zmq.Poller``.  The I/O thread owns the zmq sockets: it
seals batches when they are full or ``linger_ms`` old, encodes them with
:func:`hpbroker.batch.encode_batch` (one call per batch), sends them
(at most ``max_in_flight`` unanswered requests per acceptor), and resolves
the batch's future when the ack comes back.  Each batch has one
``concurrent.futures.Future``; ``send`` returns a light
:class:`FutureRecordMetadata` over it (the batch future plus the message's
index), so the per-message cost is a few list appends under the lock.
Retriable errors are retried
``retries`` times after ``retry_backoff_ms``; a retry goes to the front of
its acceptor's queue, but with ``max_in_flight > 1`` a retried batch can
still land after a later one (as in Kafka).

Memory is bounded: a message holds ``buffer_memory`` space from ``send``
until its batch is acknowledged or failed; ``send`` blocks up to
``max_block_ms`` for space and then raises ``BrokerError(BUSY)``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Sequence

import zmq
from crc32c import crc32c

from hpbroker import batch
from hpbroker.client.records import FutureRecordMetadata, RecordMetadata, attach, join
from hpbroker.client.split import encode_requests
from hpbroker.client.transport import Transport, topic_partitions
from hpbroker.client.waker import Waker
from hpbroker.protocol.errors import RETRIABLE, BrokerError, ErrorCode
from hpbroker.protocol.messages import Metadata, Produce, ProduceReply

_Waker = Waker  # the name tests/test_client_waker.py imports

_ACKS = {"all": -1, "-1": -1, -1: -1, "1": 1, 1: 1, "0": 0, 0: 0}


class _Batch:
    """One produce request's worth of work: encoded batch frames plus the
    one future to resolve (with the RecordMetadata of its first record).
    ``acc`` holds the raw messages until encoded."""

    __slots__ = ("topic", "partition", "frames", "future", "nbytes", "attempts", "acc")

    def __init__(self, topic, partition, frames, future, nbytes, acc=None):
        self.topic = topic
        self.partition = partition
        self.frames = frames
        self.future = future
        self.nbytes = nbytes
        self.attempts = 0
        self.acc = acc


class _Acc:
    """The open batch of one topic-partition (send() appends here).

    ``keys`` and ``ts`` stay None until a message brings a key or an
    explicit timestamp (then they are back-filled), so the common
    value-only send appends to one list.  ``nbytes`` starts at the batch
    header size: it is the encoded size, kept within ``limit``."""

    __slots__ = ("values", "keys", "ts", "future", "nbytes", "limit", "created", "created_ms")

    def __init__(self, limit: int):
        self.values: list = []
        self.keys: list | None = None
        self.ts: list | None = None
        self.future = Future()
        self.nbytes = batch.HEADER_SIZE
        self.limit = limit
        self.created = time.monotonic()
        self.created_ms = batch.now_ms()


_SILENCE = frozenset({ErrorCode.REQUEST_TIMED_OUT, ErrorCode.BROKER_SHUTTING_DOWN})  # the broker may be gone


class Producer:
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
    ):
        if acks not in _ACKS:
            raise ValueError(f"acks must be 0, 1 or 'all', got {acks!r}")
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
        self._t = Transport(bootstrap, request_timeout_ms=request_timeout_ms, hwm=hwm)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._open: dict[tuple[str, int], _Acc] = {}
        self._by_topic: dict[str, dict[int, _Acc]] = {}  # the same accumulators, for send()'s lookup
        self._sealed: deque = deque()  # _Batch, in send order
        self._commands: deque = deque()  # (topic, Future) metadata lookups
        self._used = 0
        self._outstanding = 0  # batches not yet acknowledged or failed
        self._flushing = 0
        self._stop = False
        self._closed = False
        self._partitions: dict[str, int] = {}
        self._rr = itertools.count()
        # I/O-thread-only state
        self._queues: dict[str, deque] = {}
        self._inflight: dict[str, int] = {}
        self._retry: list = []
        self._retry_seq = itertools.count()
        # several brokers: find the leader again after a NOT_LEADER or a silence
        self._want_leader = False
        self._discovering = False
        self._discover_after = 0.0
        self._waker = Waker()
        self._thread = threading.Thread(target=self._run, name="hpbroker-producer-io", daemon=True)
        self._thread.start()

    # -- public API (any thread) ---------------------------------------------------------

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
             timestamp_ms: int | None = None, callback=None) -> FutureRecordMetadata:
        """Queue one message; the future resolves to its RecordMetadata.
        ``callback(metadata, exception)`` runs on the I/O thread when done.

        ``value`` and ``key`` are bytes (a bytearray or memoryview is
        copied); anything else raises TypeError here, not in the I/O thread."""
        if value.__class__ is not bytes:
            value = _as_bytes(value, "value")
        size = len(value) + _ENTRY
        if key is not None:
            if key.__class__ is not bytes:
                key = _as_bytes(key, "key")
            size += len(key)
        n = self._partitions.get(topic) or self._partitions_for(topic)
        if partition is None:
            partition = crc32c(key) % n if key is not None else next(self._rr) % n
        with self._lock:
            if self._used + size > self.buffer_memory or self._stop:
                self._reserve(size)
            else:
                self._used += size
            by_part = self._by_topic.get(topic)
            acc = by_part.get(partition) if by_part is not None else None
            if acc is None or acc.nbytes + size > acc.limit:
                acc = self._new_acc(topic, partition, acc)
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
            fut = FutureRecordMetadata(acc.future, i)
            if callback is not None:
                attach(fut, callback)  # under the lock: the batch cannot be done yet
            if acc.nbytes >= acc.limit:
                self._seal((topic, partition), acc)
                self._waker.wake()
        return fut

    def send_batch(self, topic: str, values: Sequence[bytes], partition: int | None = None,
                   keys: Sequence[bytes | None] | None = None, timestamp_ms: int | None = None,
                   callback=None) -> FutureRecordMetadata:
        """Send a list of values to one partition (round robin when not
        given) as one request; the future resolves to the RecordMetadata of
        the first, and the others follow at contiguous offsets.  A list
        larger than the broker's batch limit is split into several batches
        of the same request; one larger than the request limit goes as
        several requests (still in order, but then not guaranteed
        contiguous)."""
        if not len(values):
            raise ValueError("send_batch needs at least one value")
        n = self._partitions.get(topic) or self._partitions_for(topic)
        if partition is None:
            partition = next(self._rr) % n
        requests = encode_requests(values, keys, timestamp_ms, self._t.max_batch_bytes, self._t.max_request_bytes)
        whole: Future = Future()
        fut = FutureRecordMetadata(whole, 0)
        if callback is not None:
            attach(fut, callback)
        parts = [Future() for _ in requests] if len(requests) > 1 else [whole]
        if len(parts) > 1:
            join(whole, parts)
        with self._lock:
            tp = (topic, partition)
            acc = self._open.get(tp)
            if acc is not None:
                self._seal(tp, acc)  # keep send order within the partition
            for frames, f in zip(requests, parts):
                nbytes = sum(map(len, frames))
                self._reserve(nbytes)
                self._sealed.append(_Batch(topic, partition, frames, f, nbytes))
                self._outstanding += 1
        self._waker.wake()
        return fut

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._partitions.get(topic) or self._partitions_for(topic)))

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait until all of it is acknowledged
        or failed; BrokerError(REQUEST_TIMED_OUT) after ``timeout`` s."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush() from a producer callback would deadlock")
        with self._lock:
            self._flushing += 1
        self._waker.wake()
        try:
            with self._lock:
                done = self._idle.wait_for(lambda: self._outstanding == 0, timeout)
                left = self._outstanding
        finally:
            with self._lock:
                self._flushing -= 1
        if not done:
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"flush: {left} batches still unacknowledged after {timeout}s")

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the I/O thread; whatever is still unacknowledged
        after ``timeout`` fails with BROKER_SHUTTING_DOWN."""
        if self._closed:
            return
        try:
            if self._thread.is_alive():
                self.flush(timeout)
        finally:
            self._closed = True
            with self._lock:
                self._stop = True
            self._waker.wake()
            self._thread.join()
            self._waker.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- user-thread helpers --------------------------------------------------------------

    def _reserve(self, size: int) -> None:
        """Take ``size`` bytes of buffer_memory (lock held), waiting if needed."""
        if self._stop:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
        if self._used + size > self.buffer_memory and self._used > 0:
            if threading.current_thread() is self._thread:
                raise BrokerError(ErrorCode.BUSY, "buffer_memory is full (send from a callback cannot wait)")
            if not self._space.wait_for(lambda: self._used + size <= self.buffer_memory or self._used == 0 or self._stop,
                                        self.max_block):
                raise BrokerError(ErrorCode.BUSY, f"buffer_memory ({self.buffer_memory} bytes) stayed full for max_block_ms")
            if self._stop:
                raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
        self._used += size

    def _new_acc(self, topic: str, partition: int, full: _Acc | None) -> _Acc:
        """Open a batch for (topic, partition), sealing ``full`` first (lock held)."""
        tp = (topic, partition)
        if full is not None:
            self._seal(tp, full)
        acc = self._open[tp] = _Acc(min(self.batch_size, self._t.max_batch_bytes))
        self._by_topic.setdefault(topic, {})[partition] = acc
        self._outstanding += 1
        self._waker.wake()
        return acc

    def _seal(self, tp, acc: _Acc) -> None:
        del self._open[tp]
        del self._by_topic[tp[0]][tp[1]]
        self._sealed.append(_Batch(tp[0], tp[1], None, acc.future, acc.nbytes - batch.HEADER_SIZE, acc))

    def _partitions_for(self, topic: str) -> int:
        if self._closed or self._stop:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
        if threading.current_thread() is self._thread:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} is not known yet (cannot look it up from a callback)")
        fut: Future = Future()
        with self._lock:
            self._commands.append((topic, fut))
        self._waker.wake()
        try:
            return fut.result(self.max_block)
        except FutureTimeout:
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"no metadata for {topic!r} within max_block_ms") from None

    # -- the I/O thread ----------------------------------------------------------------------

    def _run(self) -> None:
        t = self._t
        t.poller.register(self._waker.rfd, zmq.POLLIN)
        try:
            while True:
                fired = t.poll(self._timeout_ms())
                if fired:
                    self._waker.drain()
                self._rediscover()
                self._lookups()
                self._collect()
                self._release_retries()
                self._dispatch()
                if self._stop:
                    break
        finally:
            self._shutdown()

    def _timeout_ms(self) -> float | None:
        now = time.monotonic()
        due = None
        lookups = not (self._t.several and not self._t.acceptors)  # else they wait for _rediscover
        with self._lock:
            if self._sealed or (self._commands and lookups) or self._stop:
                return 0
            if self._open:
                if self._flushing:
                    return 0
                due = min(a.created for a in self._open.values()) + self.linger
        if self._retry:
            r = self._retry[0][0]
            due = r if due is None else min(due, r)
        if self._want_leader and not self._discovering:
            due = self._discover_after if due is None else min(due, self._discover_after)
        return None if due is None else max(0.0, (due - now) * 1000.0)

    def _rediscover(self) -> None:
        """Several brokers: ask them all which one leads (after a NOT_LEADER
        or a request nobody answered), then send everything queued there.
        Batches wait while the question is out, not longer: with no leader
        found they go on being retried where they were, and fail once their
        retries are spent."""
        if not self._want_leader or self._discovering or time.monotonic() < self._discover_after:
            return
        self._want_leader = False
        self._discovering = True

        def done(rep) -> None:
            self._discovering = False
            if rep is None:
                self._discover_after = time.monotonic() + max(self.retry_backoff, 1.0)
                self._want_leader = self._outstanding > 0 or bool(self._commands)  # keep looking while anything waits
                return
            moved = [b for q in self._queues.values() for b in q]
            for q in self._queues.values():
                q.clear()
            for b in moved:  # each partition's batches keep their order
                self._queue_for(b.partition).append(b)

        self._t.discover(done, timeout_ms=self.connect_timeout_ms)

    def _queue_for(self, partition: int) -> deque:
        ep = self._t.endpoint_for(partition)
        q = self._queues.get(ep)
        if q is None:
            q = self._queues[ep] = deque()
            self._inflight[ep] = 0
        return q

    def _lookups(self) -> None:
        if self._t.several and not self._t.acceptors:
            self._want_leader = True  # the first lookup: which of the brokers leads?
            return
        with self._lock:
            cmds = list(self._commands)
            self._commands.clear()
        for topic, fut in cmds:
            if topic in self._partitions:
                fut.set_result(self._partitions[topic])
                continue
            endpoint = self._t.acceptors[0] if self._t.acceptors else self._t.bootstrap

            def on_reply(rep, _p, topic=topic, fut=fut):
                if rep.code:
                    fut.set_exception(BrokerError(rep.code, rep.message))
                    return
                try:
                    self._t.apply_metadata(rep)
                    n = topic_partitions(rep, topic)
                except BrokerError as e:
                    fut.set_exception(e)
                    return
                self._partitions[topic] = n
                fut.set_result(n)

            self._t.send(endpoint, Metadata(id=self._t.next_id(), topics=[topic]), on_reply=on_reply,
                         timeout_ms=self.connect_timeout_ms)

    def _collect(self) -> None:
        now = time.monotonic()
        with self._lock:
            hurry = self._flushing or self._stop
            for tp, acc in list(self._open.items()):
                if hurry or now >= acc.created + self.linger:
                    self._seal(tp, acc)
            ready = list(self._sealed)
            self._sealed.clear()
        for b in ready:
            if b.acc is not None:
                a = b.acc
                b.acc = None
                try:
                    b.frames = [batch.encode_batch(a.values, a.keys, timestamp_ms=a.created_ms, timestamps_ms=a.ts)]
                except Exception as e:  # never let one bad batch stop the I/O thread
                    self._fail(b, BrokerError(ErrorCode.BAD_REQUEST, f"could not encode the batch: {e}"))
                    continue
            self._queue_for(b.partition).append(b)

    def _release_retries(self) -> None:
        if self._discovering:
            return
        now = time.monotonic()
        back = []
        while self._retry and self._retry[0][0] <= now:
            back.append(heapq.heappop(self._retry)[2])
        for b in reversed(back):
            self._queue_for(b.partition).appendleft(b)

    def _dispatch(self) -> None:
        if self._discovering:
            return
        for ep, q in self._queues.items():
            while q and (self.acks == 0 or self._inflight[ep] < self.max_in_flight):
                self._send(ep, q.popleft())

    def _send(self, ep: str, b: _Batch) -> None:
        t = self._t
        req = Produce(id=t.next_id(), topic=b.topic, partition=b.partition, acks=self.acks,
                      timeout_ms=self.request_timeout_ms)
        b.attempts += 1
        if self.acks == 0:
            t.send(ep, req, b.frames, on_reply=lambda rep, _p: self._complete(b, None, rep),
                   on_sent=lambda: self._complete(b, -1, None), timeout_ms=self.request_timeout_ms)
            return
        self._inflight[ep] += 1

        def on_reply(rep, _p):
            self._inflight[ep] -= 1
            self._on_reply(b, rep)

        # give the broker its own timeout_ms first, plus time for the reply to travel
        t.send(ep, req, b.frames, on_reply=on_reply, timeout_ms=self.request_timeout_ms + 5000)

    def _on_reply(self, b: _Batch, rep) -> None:
        if rep.code == 0:
            if isinstance(rep, ProduceReply) and len(rep.base_offsets) >= 1:
                self._complete(b, rep.base_offsets[0], None)
            else:
                self._complete(b, None, type(rep)(id=rep.id, code=int(ErrorCode.INTERNAL), message=f"unexpected reply {rep!r}"))
            return
        if rep.code == ErrorCode.NOT_LEADER or (self._t.several and rep.code in _SILENCE):
            self._want_leader = True
        if rep.code in RETRIABLE and b.attempts <= self.retries and not self._stop:
            heapq.heappush(self._retry, (time.monotonic() + self.retry_backoff, next(self._retry_seq), b))
            return
        self._complete(b, None, rep)

    def _complete(self, b: _Batch, base: int | None, rep) -> None:
        if rep is not None:
            self._fail(b, BrokerError(rep.code, rep.message))
            return
        b.future.set_result(RecordMetadata(b.topic, b.partition, base))
        self._release(b)

    def _fail(self, b: _Batch, err: BrokerError) -> None:
        b.future.set_exception(err)
        self._release(b)

    def _release(self, b: _Batch) -> None:
        with self._lock:
            self._used -= b.nbytes
            self._outstanding -= 1
            self._space.notify_all()
            if self._outstanding == 0:
                self._idle.notify_all()

    def _shutdown(self) -> None:
        """Fail whatever is left (close() timed out, or the thread died)."""
        from hpbroker.protocol.messages import ErrorReply

        self._stop = True
        gone = ErrorReply(id=-1, code=int(ErrorCode.BROKER_SHUTTING_DOWN), message="producer closed before the broker acknowledged")
        try:
            for rid in list(self._t.pending):
                call = self._t.pending.pop(rid)
                if call.on_reply is not None:
                    call.on_reply(gone, [])
            with self._lock:
                for tp, a in list(self._open.items()):
                    self._seal(tp, a)
                left = list(self._sealed)
                self._sealed.clear()
                for _, fut in self._commands:
                    fut.set_exception(BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed"))
                self._commands.clear()
            left += [b for q in self._queues.values() for b in q] + [r[2] for r in self._retry]
            for b in left:
                self._complete(b, None, gone)
        finally:
            self._t.close()
            with self._lock:
                self._space.notify_all()
                self._idle.notify_all()


_ENTRY = batch.ENTRY_SIZE


def _as_bytes(v, what: str) -> bytes:
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)  # a copy: the caller may reuse its buffer before the batch is encoded
    raise TypeError(f"{what} must be bytes, got {type(v).__name__}")
