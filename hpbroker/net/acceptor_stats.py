"""What an acceptor counts in its slot of the stats block (hpbroker/stats).

Per request, never per message: a reply's kind and code, a produce
request's bytes and the time from its arrival to its ack, a fetch reply's
bytes and the offsets it advanced over.  Nothing here blocks or waits: the
slot is plain shared memory only this process writes.
"""

from __future__ import annotations

from hpbroker.protocol import messages as m
from hpbroker.stats import NullSlot, Slot
from hpbroker.stats import layout as L

_KIND = {m.ProduceReply: 0, m.FetchReply: 1}
_REQUESTS = L.REQUESTS_AT
_PRODUCE_BYTES = L.COUNTER["produce_request_bytes"]
_FETCH_BYTES = L.COUNTER["fetch_bytes"]
_FETCH_MESSAGES = L.COUNTER["fetch_messages"]
_BUSY_DROPPED = L.COUNTER["busy_dropped"]
_PENDING = L.GAUGE["pending_requests"]
_PARKED = L.GAUGE["parked_fetch_partitions"]
_ACK = L.HISTOGRAM_INDEX["produce_ack_latency_seconds"]
_OUT_MESSAGES = L.ROW["messages_out"]
_OUT_BYTES = L.ROW["bytes_out"]
BEAT_EVERY_S = 0.5


class AcceptorStats:
    def __init__(self, slot: Slot | None = None):
        self.slot = slot = slot or NullSlot()
        self.w = slot.w  # the slot's words: the per-request paths store into them directly
        self._since: dict[tuple[bytes, int], float] = {}  # (client, request id) -> arrival, until acked
        self._beat_due = 0.0

    def reply(self, reply) -> None:
        code = reply.code
        self.w[_REQUESTS + _KIND.get(reply.__class__, 2) * L.CODE_SLOTS + (code if 0 <= code < 63 else 63)] += 1

    def dropped(self, code: int) -> None:
        """An acks=0 produce refused without a reply."""
        self.slot.reply(0, code)
        if code == 6:  # BUSY
            self.slot.add(_BUSY_DROPPED)

    def produced(self, ident: bytes, req, batches, now: float) -> None:
        """A client's produce request went to its writer at ``now``."""
        self.w[_PRODUCE_BYTES] += batches[0].nbytes if len(batches) == 1 else sum(b.nbytes for b in batches)
        if req.acks:
            self._since[(ident, req.id)] = now

    def answered(self, ident, reply, now: float) -> None:
        t0 = self._since.pop((ident, reply.id), None)
        if t0 is not None:
            self.slot.observe(_ACK, now - t0)

    def fetched(self, req, nbytes: int, next_offset: int) -> None:
        n = max(0, next_offset - req.offset)
        slot = self.slot
        slot.add(_FETCH_BYTES, nbytes)
        slot.add(_FETCH_MESSAGES, n)
        at = slot.row(req.topic, req.partition)
        if at >= 0:
            slot.w[at + _OUT_MESSAGES] += n
            slot.w[at + _OUT_BYTES] += nbytes

    def tick(self, now: float, pending, parked) -> None:
        """``pending()`` and ``parked()`` count requests; called only when due."""
        if now >= self._beat_due:
            self._beat_due = now + BEAT_EVERY_S
            self.slot.beat()
            self.slot.set(_PENDING, pending())
            self.slot.set(_PARKED, parked())
