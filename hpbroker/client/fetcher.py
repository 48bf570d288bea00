"""The consumer's fetch machinery: one long-poll Fetch in flight per
partition, the replies buffered, and records handed out decoded or raw.

Single-threaded: the caller's thread owns the transport.  For every
assigned partition at most one Fetch is in flight; as soon as its reply
arrives the next Fetch is sent, so the broker is already waiting for more
while the caller works through the last reply (one reply is buffered per
partition).  :meth:`Fetcher.move` forgets the in-flight fetch of that
partition (its late reply is ignored).

A fetch returns whole batches, so one that starts in the middle of a batch
also returns the records before the requested offset; :meth:`take_messages`
skips them, :meth:`take_raw` reports them (``RawBatches.start_offset``).

With a server-side filter the replies hold only the matching records, and
each says where the next fetch starts (``FetchReply.next_offset``, past the
records the broker dropped); the position moves there once the reply's
records are handed out, so commits cover the dropped records too.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import msgspec

from hpbroker import batch
from hpbroker.client.integrity import CorruptBatchError, check_reply
from hpbroker.client.records import Message, RawBatches
from hpbroker.client.transport import Transport
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.filters import Filter, select
from hpbroker.protocol.messages import Fetch, FetchReply

TP = tuple[str, int]

_RETRY = (ErrorCode.REQUEST_TIMED_OUT, ErrorCode.BUSY, ErrorCode.BROKER_SHUTTING_DOWN, ErrorCode.NOT_LEADER)


class Part:
    __slots__ = ("topic", "partition", "position", "fetch_id", "fetch_offset", "buffer", "decoded", "error", "skip_to")

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        self.position: int | None = None  # next offset to hand out
        self.fetch_id: int | None = None  # the fetch in flight
        self.fetch_offset = 0  # where the next fetch starts
        self.buffer: deque = deque()  # (memoryview, pos) of received batches not yet handed out
        self.decoded: deque = deque()  # Messages decoded from the current batch
        self.error: BrokerError | None = None
        self.skip_to = 0  # the last reply's next_offset: the position once its records are handed out


class Fetcher:
    def __init__(self, t: Transport, *, max_wait_ms: int, max_bytes: int, min_bytes: int, reset_needed: Callable,
                 decode_headers: Callable | None = None, filter: Filter | dict | None = None,
                 check_crcs: bool = True):
        """``reset_needed(part)``: sets ``part.position`` from the reset
        policy (auto_offset_reset) when it is None.  ``filter``: a
        server-side filter (a :class:`Filter`, or a dict in its language;
        checked here, ValueError when bad).  ``check_crcs``: check every
        batch's CRC32C and offsets before handing it out
        (:mod:`hpbroker.client.integrity`)."""
        self.t = t
        self.check_crcs = check_crcs
        self.max_wait_ms = max_wait_ms
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self.reset_needed = reset_needed
        self.decode_headers = decode_headers
        self.filter = None if filter is None else Filter.of(filter)
        self._filter_raw = msgspec.UNSET if self.filter is None else msgspec.Raw(self.filter.encode())
        self.fetched_bytes = 0  # payload bytes received
        self.parts: dict[TP, Part] = {}
        self.lost = False  # a broker did not answer: with several, find the one to read from again
        self._rr = 0

    def rotation(self) -> list[Part]:
        parts = list(self.parts.values())
        if not parts:
            return parts
        self._rr = (self._rr + 1) % len(parts)
        return parts[self._rr:] + parts[: self._rr]

    def move(self, part: Part, offset: int | None) -> None:
        if part.fetch_id is not None:
            self.t.forget(part.fetch_id)
            part.fetch_id = None
        part.buffer.clear()
        part.decoded.clear()
        part.error = None
        part.position = offset
        part.fetch_offset = offset or 0
        part.skip_to = 0

    def drop(self, tp: TP) -> None:
        part = self.parts.pop(tp, None)
        if part is not None and part.fetch_id is not None:
            self.t.forget(part.fetch_id)

    def fetch_all(self, discover_timeout_ms: int) -> None:
        if self.lost:
            self.lost = False
            self.t.discover_now(discover_timeout_ms)  # None: try the same ones again
        for part in list(self.parts.values()):
            if part.position is None:
                self.reset_needed(part)
            if part.fetch_id is None and not part.buffer and part.error is None:
                self._send_fetch(part)

    def raise_errors(self) -> None:
        for part in self.parts.values():
            if part.error is not None:
                err, part.error = part.error, None
                raise err

    def _send_fetch(self, part: Part) -> None:
        rid = self.t.next_id()
        req = Fetch(id=rid, topic=part.topic, partition=part.partition, offset=part.fetch_offset,
                    max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms, min_bytes=self.min_bytes,
                    filter=self._filter_raw)
        part.fetch_id = rid
        self.t.send(self.t.endpoint_for(part.partition), req,
                    on_reply=lambda rep, payloads: self._on_fetch(part, rid, rep, payloads),
                    timeout_ms=self.t.request_timeout_ms + self.max_wait_ms)

    def _on_fetch(self, part: Part, rid: int, rep, payloads) -> None:
        if part.fetch_id != rid:
            return  # moved or dropped meanwhile
        part.fetch_id = None
        if rep.code == ErrorCode.OFFSET_OUT_OF_RANGE:
            part.position = None  # fetch_all resets it, or raises with auto_offset_reset 'none'
            return
        if rep.code in _RETRY:
            if rep.code != ErrorCode.BUSY and self.t.several:
                self.lost = True  # maybe failed over: ask every broker which one to read from
            return  # retried by the next fetch_all
        if rep.code == ErrorCode.CORRUPT_STORED_BATCH:
            part.error = CorruptBatchError(part.topic, part.partition, part.fetch_offset, rep.message, rep.code)
            return
        if rep.code or not isinstance(rep, FetchReply):
            part.error = BrokerError(rep.code or ErrorCode.INTERNAL, rep.message or f"unexpected {type(rep).__name__}")
            return
        data = payloads[0]
        self.fetched_bytes += len(data)
        old_broker = self.filter is not None and rep.next_offset < 0
        # every batch is checked before anything of it is handed out (hpbroker.client.integrity);
        # a filtered reply's batches are cut from the stored ones, so their offsets skip
        end, nxt, problem = check_reply(data, part.fetch_offset, crcs=self.check_crcs,
                                        contiguous=self.filter is None or old_broker)
        if problem is not None:
            if end == 0:
                part.error = CorruptBatchError(part.topic, part.partition, nxt, problem)
                return
            # the good batches before it are handed out; the next fetch starts at the bad one and raises then
            data = data[:end]
            rep = FetchReply(id=rep.id, next_offset=-1)
        if old_broker and len(data):
            # a broker older than filters ignored ours and sent everything: filter here
            pieces, _, fnext, _ = select(data, self.filter, part.fetch_offset, 1 << 62)
            data = memoryview(b"".join(pieces))
            rep = FetchReply(id=rep.id, next_offset=nxt if problem is not None else fnext)
        end = 0
        last = None
        for pos, h in batch.iter_batches(data):
            end = pos + h.batch_length
            last = h
        # past the records a filter dropped (-1 from a broker without filters)
        part.skip_to = max(rep.next_offset, part.fetch_offset)
        if last is None:  # long poll timed out with nothing new, or everything read was filtered out
            part.fetch_offset = part.skip_to
            _skip(part)
            return
        part.fetch_offset = max(last.base_offset + last.record_count, part.skip_to)
        part.buffer.append((data[:end], 0))

    def take_messages(self, part: Part, limit: int, out: list) -> None:
        pos = part.position
        if pos is None:
            return
        while limit > 0:
            if not part.decoded:
                if not part.buffer:
                    break
                data, at = part.buffer[0]
                h = batch.read_header(data, at)
                if h.base_offset + h.record_count > pos:
                    try:  # decoded before the batch leaves the buffer: a failure loses nothing
                        part.decoded.extend(_messages(part.topic, part.partition, data, at, h, pos,
                                                      self.decode_headers))
                    except (batch.CorruptBatch, ValueError) as e:
                        part.error = BrokerError(ErrorCode.CORRUPT_BATCH,
                                                 f"{part.topic}/{part.partition}: the batch at offset "
                                                 f"{h.base_offset} does not decode: {e}")
                        break
                nxt = at + h.batch_length
                if nxt >= len(data):
                    part.buffer.popleft()
                else:
                    part.buffer[0] = (data, nxt)
                continue
            take = min(limit, len(part.decoded))
            chunk = [part.decoded.popleft() for _ in range(take)]
            out.extend(chunk)
            limit -= take
            pos = chunk[-1].offset + 1
        part.position = pos
        _skip(part)

    def take_raw(self, part: Part, budget: int) -> RawBatches | None:
        pos = part.position
        if pos is None or not part.buffer:
            return None
        if part.decoded:  # poll() left half a batch: hand the rest out via poll() first
            return None
        data, at = part.buffer[0]
        end = at
        count = 0
        base = None
        for p, h in batch.iter_batches(data, at):
            if h.base_offset + h.record_count <= pos:
                at = end = p + h.batch_length
                continue
            if base is not None and end - at + h.batch_length > budget:
                break
            if base is None:
                base = h.base_offset
            end = p + h.batch_length
            count += h.record_count
            last = h
        if end >= len(data):
            part.buffer.popleft()
        else:
            part.buffer[0] = (data, end)
        if base is None:
            _skip(part)
            return None
        part.position = last.base_offset + last.record_count
        _skip(part)
        return RawBatches(part.partition, data[at:end], count, base, pos, part.topic)


def _skip(part: Part) -> None:
    """Once every record of the last reply is handed out, move the position
    past the records the broker's filter dropped after them."""
    if not part.buffer and not part.decoded and part.position is not None and part.skip_to > part.position:
        part.position = part.skip_to


def _messages(topic: str, partition: int, mv: memoryview, at: int, h: batch.BatchHeader, skip_below: int,
              decode_headers) -> list[Message]:
    """Decode one batch into Messages, dropping offsets below ``skip_below``."""
    first = max(0, skip_below - h.base_offset)
    ts, klen, vlen, hlen, starts = batch.record_lists(mv, at, h, first)
    out = []
    off = h.base_offset + first
    for i, s in enumerate(starts):
        k = klen[i]
        if k < 0:
            key = None
        else:
            key = mv[s: s + k].tobytes()
            s += k
        e = s + vlen[i]
        hd = None
        if hlen[i]:
            hd = mv[e: e + hlen[i]].tobytes()
            if decode_headers is not None:
                hd = decode_headers(hd)
        out.append(Message(topic, partition, off + i, key, mv[s:e].tobytes(), ts[i], hd))
    return out
