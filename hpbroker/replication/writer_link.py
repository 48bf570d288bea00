"""A slave's replicator as a producer into its own writers' rings.

On a slave the replicator is one more producer into each local writer's
ring (``REPLICA``, ``TRUNCATE`` and ``ACK_TO`` records,
:mod:`hpbroker.ipc.handoff`), so replicated batches go through the same
append, group commit and fdatasync as a master's, and it hears back like an
acceptor: one :class:`~hpbroker.ipc.completions.Completions` per group
commit on a PULL socket.

The ring writers and the socket are passed in: shared memory and
``ipc://`` in the broker (:func:`hpbroker.replication.slave.open_slave`),
a ``bytearray`` ring and ``inproc://`` in tests.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import zmq

from hpbroker.ipc import completions, handoff
from hpbroker.sockets import drain

log = logging.getLogger("hpbroker.replication")

CLAIM_TIMEOUT_S = 0.5


class WriterLink:
    def __init__(self, rings: list, completions_sock: zmq.Socket, on_close: list[Callable[[], None]] = ()):
        self.rings = rings  # one ring writer per local writer, in writer order
        self.comp = completions_sock
        self.heard_from: set[int] = set()  # writers that reported their partitions
        self.acking_to: list[str] = []  # where the writers report each flush (the master's acceptors)
        self._on_close = list(on_close)

    def all_heard(self) -> bool:
        return len(self.heard_from) >= len(self.rings)

    def poll(self, timeout_ms: int) -> bool:
        return bool(self.comp.poll(timeout_ms))

    def completions(self) -> Iterator[completions.Completions]:
        """Every completion message waiting now."""
        for frame in drain(self.comp, copy=False):
            c = completions.decoder.decode(frame.buffer)
            self.heard_from.add(c.writer)
            yield c

    def write(self, kind: int, token: int, topic: str, partition: int, frames: list, arg: int = 0) -> None:
        """One ring record to the writer that owns the partition; raises
        :class:`~hpbroker.ring.RingFull` when its ring stays full for
        ``CLAIM_TIMEOUT_S`` (nothing is written then)."""
        ring = self.rings[handoff.owner_of(topic, partition, len(self.rings))]
        handoff.put_record(ring, kind, CLAIM_TIMEOUT_S, token, topic.encode(), partition, frames, arg=arg)

    def ack_to(self, epoch: int, slave_id: int, endpoints: list[str]) -> None:
        """Have the writers report each flush straight to the master's
        acceptors (or stop, with no endpoints).  Best effort: the SlaveAck
        the replicator sends stays the authoritative report."""
        if not endpoints and not self.acking_to:
            return
        payload = handoff.ack_to_encoder.encode(handoff.AckTo(epoch=epoch, slave_id=slave_id, endpoints=list(endpoints)))
        for ring in self.rings:
            try:
                handoff.put_record(ring, handoff.ACK_TO, CLAIM_TIMEOUT_S, 0, b"", 0, [payload])
            except Exception as e:  # noqa: BLE001 - a full or closed ring: the replicator's acks still flow
                log.warning("could not tell a writer where to report its flushes (%s)", e)
        self.acking_to = list(endpoints)

    def close(self) -> None:
        for close in self._on_close:
            close()
