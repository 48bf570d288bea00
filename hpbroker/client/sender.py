"""``Sender``: the Producer's I/O thread.

It owns the transport's zmq sockets and runs one loop: wait on the sockets,
the wake-up fd and the next deadline (a linger end, a retry, a leader
search); then find the leader again if asked, answer metadata lookups, take
the batches the accumulator has ready and encode them, put due retries back,
and send what the in-flight window lets out.  Replies resolve the batch's
future and free its ``buffer_memory``; retriable errors are retried
``retries`` times after ``retry_backoff`` (a NOT_LEADER, or a silence with
several brokers, also starts a leader search).

With a spill journal (:mod:`~hpbroker.client.spiller`, ``spill`` given) the
loop also takes the re-sends of spilled messages beside the accumulator's
batches, and a retriable error never fails a message: it is retried every
``retry_backoff`` until answered, and a silence (REQUEST_TIMED_OUT,
BROKER_SHUTTING_DOWN, a dropped connection) marks the broker down, so new
messages go to the journal.  At close, what the broker did not acknowledge
goes to the journal instead of failing.  ``ordered`` lets out one batch per
partition at a time (:class:`~hpbroker.client.window.SendWindow`'s
``per_partition``).

Every batch - from ``send``, ``send_batch`` or a re-send of spilled
messages - is encoded in one place, :meth:`Sender._collect`
(``Batch.encode``), and goes out through :meth:`Sender._send`, where an
idempotent producer's :class:`~hpbroker.client.idempotence.Sequencer`
stamps it the first time; a retry sends the same bytes with the same
stamp, so the broker recognises a copy whichever way the batch came.

Caller threads reach it only through the shared state under the Producer's
lock (the accumulator, the buffer memory, :attr:`commands`) and the waker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

import zmq

from hpbroker.client.accumulator import Accumulator, Batch
from hpbroker.client.cluster import topic_partitions
from hpbroker.client.leader import LeaderSearch
from hpbroker.client.memory import BufferMemory
from hpbroker.client.records import RecordMetadata
from hpbroker.client.spill import encode_record
from hpbroker.client.spiller import records_of_batch
from hpbroker.client.transport import Transport
from hpbroker.client.waker import Waker
from hpbroker.client.window import SendWindow
from hpbroker.protocol.errors import RETRIABLE, BrokerError, ErrorCode
from hpbroker.protocol.messages import ErrorReply, Metadata, Produce, ProduceReply

log = logging.getLogger("hpbroker.client")

_SILENCE = frozenset({ErrorCode.REQUEST_TIMED_OUT, ErrorCode.BROKER_SHUTTING_DOWN})  # the broker may be gone


class Sender:
    def __init__(self, transport: Transport, waker: Waker, lock: threading.Lock, accumulator: Accumulator,
                 memory: BufferMemory, *, acks: int, max_in_flight: int, retries: int, retry_backoff: float,
                 request_timeout_ms: int, connect_timeout_ms: int, ordered: bool = False, sequencer=None):
        """``ordered``: one batch per partition out at a time; ``sequencer``: an
        idempotence.Sequencer for an idempotent producer, else None."""
        self._t = transport
        self._waker = waker
        self._lock = lock
        self._accum = accumulator
        self._memory = memory
        self.acks = acks
        self.retries = retries
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.partitions: dict[str, int] = {}  # topic -> partition count, read by send() without the lock
        self.commands: deque = deque()  # (topic, Future): metadata lookups asked for by caller threads
        self.stopping = False
        self.spill = None  # a Spiller, set by the Producer before start()
        self._left: list[Batch] = []  # at close, with a spill: unacknowledged batches to put back
        self._window = SendWindow(transport.endpoint_for, None if acks == 0 else max_in_flight, retry_backoff,
                                  per_partition=ordered)
        self._leader = LeaderSearch(max(retry_backoff, 1.0))
        self._seq = sequencer
        self.thread = threading.Thread(target=self._run, name="hpbroker-producer-io", daemon=True)

    # -- caller threads --------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def lookup(self, topic: str) -> Future:
        """Ask the I/O thread for ``topic``'s partition count."""
        fut: Future = Future()
        with self._lock:
            self.commands.append((topic, fut))
        self._waker.wake()
        return fut

    def stop(self) -> None:
        """Stop the loop and wait for it; what is left fails with BROKER_SHUTTING_DOWN."""
        self._halt()
        self._waker.wake()
        self.thread.join()

    def _halt(self) -> None:
        """From now on send() raises BROKER_SHUTTING_DOWN, open batches are
        sealed at once and nothing is retried."""
        with self._lock:
            self.stopping = True
            self._memory.closed = True
            self._accum.closed = True

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        t = self._t
        t.poller.register(self._waker.rfd, zmq.POLLIN)
        if self.spill is not None:
            t.on_disconnect = lambda _ep: self.spill.mark_down()
        try:
            while True:
                fired = t.poll(self._timeout_ms())
                if fired:
                    self._waker.drain()
                if self.spill is not None and self.spill.evacuate_wanted:
                    self._evacuate()
                self._rediscover()
                self._lookups()
                self._collect()
                if not self._leader.asking:  # batches wait while the question is out
                    self._window.release_retries(time.monotonic())
                    for ep, b in self._window.take_sendable():
                        self._send(ep, b)
                if self.stopping:
                    break
        finally:
            self._shutdown()

    def _timeout_ms(self) -> float | None:
        now = time.monotonic()
        lookups = not (self._t.several and not self._t.acceptors)  # else they wait for _rediscover
        with self._lock:
            if (self.commands and lookups) or self.stopping:
                return 0
            due = self._accum.next_due()
        for d in (self._window.next_retry(), self._leader.due()):
            if d is not None:
                due = d if due is None else min(due, d)
        return None if due is None else max(0.0, (due - now) * 1000.0)

    def _rediscover(self) -> None:
        """Several brokers: ask them all which one leads, then send everything
        queued there.  With no leader found, batches go on being retried
        where they were, and fail once their retries are spent."""
        if not self._leader.start(time.monotonic()):
            return

        def done(rep) -> None:
            if rep is None:
                still_waiting = self._memory.batches > 0 or bool(self.commands)  # keep looking while anything waits
                self._leader.none_found(time.monotonic(), still_waiting)
                return
            self._leader.found()
            self._window.regroup()  # each partition's batches keep their order

        self._t.discover(done, timeout_ms=self.connect_timeout_ms)

    def _evacuate(self) -> None:
        """The broker just went down: move the in-memory batches that are not
        in flight to the spill journal, so a crash of this process does not
        lose them.  Only partitions with nothing in the journal (their
        in-memory batches are older than anything there, so they can go at
        its end); batches that were already sent and await a retry go too
        (their outcome is unknown, as a retry's would be), except for an
        idempotent producer, which keeps their stamps by retrying them from
        memory.  A batch still in flight stays: it is answered, and
        retried, as before, and the partition's journal waits for it."""
        spill = self.spill
        idempotent = self._seq is not None
        with self._lock:
            spill.evacuate_wanted = False
            outstanding = self._accum.outstanding
            pending = spill.pending
            tps = {tp for tp in outstanding if tp not in pending and (tp[0], -1) not in pending}
            if not tps:
                return
            taken = self._accum.take_partitions(tps)
            taken += self._window.take_waiting(lambda b: b.origin is None and (b.topic, b.partition) in tps
                                               and not (idempotent and b.attempts))
            if not taken:
                return
            holes = spill.reserve(taken)
            for b in taken:
                self._memory.release(b.nbytes)
                left = outstanding.get((b.topic, b.partition), 0) - 1
                if left > 0:
                    outstanding[(b.topic, b.partition)] = left
                else:
                    outstanding.pop((b.topic, b.partition), None)
        filled = [(hole, [encode_record(False, b.topic, b.partition, key, value, headers, ts)
                          for key, value, headers, ts in records_of_batch(b)]) for b, hole in holes]
        spill.fill(filled)
        log.warning("producer: moved %d messages of %d unsent batches to the spill journal %s",
                    sum(h.count for _, h in holes), len(holes), spill.directory)

    def _lookups(self) -> None:
        if self._t.several and not self._t.acceptors:
            self._leader.want()  # the first lookup: which of the brokers leads?
            return
        with self._lock:
            cmds = list(self.commands)
            self.commands.clear()
        for topic, fut in cmds:
            if topic in self.partitions:
                fut.set_result(self.partitions[topic])
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
                self.partitions[topic] = n
                fut.set_result(n)

            self._t.send(endpoint, Metadata(id=self._t.next_id(), topics=[topic]), on_reply=on_reply,
                         timeout_ms=self.connect_timeout_ms)

    def _collect(self) -> None:
        now = time.monotonic()
        with self._lock:
            ready = self._accum.take_ready(now)
            cuts = self.spill.take_resends(self._accum.outstanding) if self.spill is not None else ()
        for topic, partition, items in cuts:
            ready.append(self.spill.make_batch(topic, partition, items))
        for b in ready:
            if b.acc is not None:
                try:
                    b.encode()
                except Exception as e:  # never let one bad batch stop the I/O thread
                    self._finish(b, None, BrokerError(ErrorCode.BAD_REQUEST, f"could not encode the batch: {e}"))
                    continue
            self._window.append(b)

    # -- one batch -------------------------------------------------------------------------

    def _send(self, ep: str, b: Batch) -> None:
        t = self._t
        req = Produce(id=t.next_id(), topic=b.topic, partition=b.partition, acks=self.acks,
                      timeout_ms=self.request_timeout_ms)
        b.attempts += 1
        if self._seq is not None:
            try:
                self._seq.stamp(b)
            except BrokerError:  # no new producer id yet: try again after the backoff
                if self.acks != 0:
                    self._window.answered(ep)
                self._window.retry_later(b, time.monotonic())
                return
        if self.acks == 0:
            t.send(ep, req, b.frames, on_reply=lambda rep, _p: self._complete(b, None, rep),
                   on_sent=lambda: self._complete(b, -1, None), timeout_ms=self.request_timeout_ms)
            return

        def on_reply(rep, _p):
            self._window.answered(ep)
            self._on_reply(b, rep)

        # give the broker its own timeout_ms first, plus time for the reply to travel
        t.send(ep, req, b.frames, on_reply=on_reply, timeout_ms=self.request_timeout_ms + 5000)

    def _on_reply(self, b: Batch, rep) -> None:
        spill = self.spill
        if rep.code == ErrorCode.DUPLICATE_SEQUENCE_NUMBER and self._seq is not None:
            self._complete(b, -1, None)  # written long ago; its offset is no longer known
            return
        if rep.code == 0:
            if spill is not None and spill.down:
                spill.mark_up()
            if isinstance(rep, ProduceReply) and len(rep.base_offsets) >= 1:
                self._complete(b, rep.base_offsets[0], None)
            else:
                self._complete(b, None, type(rep)(id=rep.id, code=int(ErrorCode.INTERNAL), message=f"unexpected reply {rep!r}"))
            return
        if rep.code == ErrorCode.NOT_LEADER or (self._t.several and rep.code in _SILENCE):
            self._leader.want()
        if spill is not None and rep.code in _SILENCE:
            spill.mark_down()
        retriable = rep.code in RETRIABLE or (self._seq is not None and rep.code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER)
        if retriable and not self.stopping and (spill is not None or b.attempts <= self.retries):
            self._window.retry_later(b, time.monotonic())
            return
        self._complete(b, None, rep)

    def _complete(self, b: Batch, base: int | None, rep) -> None:
        if self._seq is not None:
            if rep is None or self.stopping:
                self._seq.done(b)
            else:
                self._seq.failed_for_good(b)
        if rep is None:
            self._finish(b, base, None)
        elif self.stopping and self.spill is not None and rep.code in RETRIABLE:
            self._finish_at_close(b)
        else:
            self._finish(b, None, BrokerError(rep.code, rep.message))

    def _finish(self, b: Batch, base: int | None, err: BrokerError | None) -> None:
        """``b`` is done for good: acknowledged at ``base``, or failed with ``err``."""
        self._window.done(b)
        if b.origin is not None:
            self.spill.resent(b, base, err)
            return
        if err is None:
            b.future.set_result(RecordMetadata(b.topic, b.partition, base))
        else:
            b.future.set_exception(err)
        self._release(b)

    def _finish_at_close(self, b: Batch) -> None:
        """Closing with a spill journal: an unacknowledged batch is kept for
        the journal (:meth:`_shutdown` puts it back), a re-send stays there."""
        self._window.done(b)
        if b.origin is not None:
            self.spill.unsent(b)
        else:
            self._left.append(b)

    def _release(self, b: Batch) -> None:
        with self._lock:
            self._memory.release(b.nbytes)
            out = self._accum.outstanding
            if out is not None:
                tp = (b.topic, b.partition)
                left = out.get(tp, 0) - 1
                if left > 0:
                    out[tp] = left
                else:
                    out.pop(tp, None)

    def _put_back(self, batches: list[Batch]) -> None:
        """Closing with a spill journal: the unacknowledged in-memory batches
        go to the journal, and their futures fail saying where they are."""
        self._left = []
        try:
            n = self.spill.put_back(batches)
            err = BrokerError(ErrorCode.BROKER_SHUTTING_DOWN,
                              f"producer closed before the broker acknowledged; the message is in the spill journal "
                              f"{self.spill.directory} and the next Producer on that spill_dir sends it")
        except Exception as e:  # never leave the futures hanging
            n = 0
            err = BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, f"producer closed before the broker acknowledged, "
                              f"and putting the message in the spill journal failed: {e}")
        for b in batches:
            b.future.set_exception(err)
            self._release(b)
        if n:
            log.warning("producer: closed with %d unacknowledged messages; they are in the spill journal %s",
                        n, self.spill.directory)

    def _shutdown(self) -> None:
        """Fail whatever is left (close() timed out, or the thread died)."""
        self._halt()
        gone = ErrorReply(id=-1, code=int(ErrorCode.BROKER_SHUTTING_DOWN), message="producer closed before the broker acknowledged")
        try:
            self._t.answer_all(gone)
            with self._lock:
                left = self._accum.take_ready(time.monotonic())  # closed: every open batch is sealed
                for _, fut in self.commands:
                    fut.set_exception(BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed"))
                self.commands.clear()
            left += self._window.take_all()
            for b in left:
                self._complete(b, None, gone)
            if self._left:
                self._put_back(self._left)
        finally:
            self._t.close()
            with self._lock:
                self._memory.wake_all()
