"""The idempotent producer's sequence numbers (Kafka's KIP-98, client side).

With ``Producer(enable_idempotence=True)`` every batch carries the
producer's id (from ``InitProducerId``) and the sequence number of its first
record, counted per partition.  A batch is stamped when it is first sent and
keeps its stamp through every retry, so the broker recognises a retry of a
batch it already wrote (its ack was lost: a timeout, a dropped connection,
a broker killed after the write) and answers with the original offsets
instead of writing it twice (hpbroker/io/producer_state.py).

A batch that fails for good leaves a hole in its partition's sequence, and
the broker refuses everything after a hole (OUT_OF_ORDER_SEQUENCE_NUMBER).
So after such a failure the producer takes a new producer id: batches sent
from then on, and retries of those the hole held up, are stamped under it
from sequence 0.  (Kafka bumps the producer epoch for the same reason.)

Owned by the producer's I/O thread; ``init`` is the one round trip to the
broker, passed in.
"""

from __future__ import annotations

from typing import Callable

from hpbroker import batch

SEQ_MOD = 1 << 31


class Sequencer:
    def __init__(self, init: Callable[[], int]):
        self._init = init
        self.producer_id = init()
        self._next: dict[tuple[str, int], int] = {}
        self._stamps: dict[object, int] = {}  # batch -> the producer id it was stamped with
        self._reset = False
        self.resets = 0

    def stamp(self, b) -> None:
        """Stamp ``b`` (a client Batch: topic, partition, frames) unless it
        already carries the current producer id."""
        if self._reset:  # raises BrokerError when the broker cannot be asked: the caller retries later
            self.producer_id = self._init()
            self._next.clear()
            self._reset = False
            self.resets += 1
        if self._stamps.get(b) == self.producer_id:
            return
        tp = (b.topic, b.partition)
        seq = self._next.get(tp, 0)
        for f in b.frames:
            batch.set_producer(f, self.producer_id, seq)
            seq = (seq + batch.peek_count(f)) % SEQ_MOD
        self._next[tp] = seq
        self._stamps[b] = self.producer_id

    def done(self, b) -> None:
        self._stamps.pop(b, None)

    def failed_for_good(self, b) -> None:
        """``b`` will never be written (or its outcome is unknown): start a
        new producer id, so no later batch waits behind its hole."""
        self._stamps.pop(b, None)
        self._reset = True  # taken at the next stamp(), from the I/O loop
