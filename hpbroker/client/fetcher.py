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
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np

from hpbroker import batch
from hpbroker.client.records import Message, RawBatches
from hpbroker.client.transport import Transport
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import Fetch, FetchReply

TP = tuple[str, int]

_RETRY = (ErrorCode.REQUEST_TIMED_OUT, ErrorCode.BUSY, ErrorCode.BROKER_SHUTTING_DOWN, ErrorCode.NOT_LEADER)


class Part:
    __slots__ = ("topic", "partition", "position", "fetch_id", "fetch_offset", "buffer", "decoded", "error")

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        self.position: int | None = None  # next offset to hand out
        self.fetch_id: int | None = None  # the fetch in flight
        self.fetch_offset = 0  # where the next fetch starts
        self.buffer: deque = deque()  # (memoryview, pos) of received batches not yet handed out
        self.decoded: deque = deque()  # Messages decoded from the current batch
        self.error: BrokerError | None = None


class Fetcher:
    def __init__(self, t: Transport, *, max_wait_ms: int, max_bytes: int, min_bytes: int, reset_needed: Callable,
                 decode_headers: Callable | None = None):
        """``reset_needed(part)``: sets ``part.position`` from the reset
        policy (auto_offset_reset) when it is None."""
        self.t = t
        self.max_wait_ms = max_wait_ms
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self.reset_needed = reset_needed
        self.decode_headers = decode_headers
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
                    max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms, min_bytes=self.min_bytes)
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
        if rep.code or not isinstance(rep, FetchReply):
            part.error = BrokerError(rep.code or ErrorCode.INTERNAL, rep.message or f"unexpected {type(rep).__name__}")
            return
        data = payloads[0]
        end = 0
        last = None
        for pos, h in batch.iter_batches(data):
            end = pos + h.batch_length
            last = h
        if last is None:
            return  # long poll timed out with nothing new
        part.fetch_offset = last.base_offset + last.record_count
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
            return None
        part.position = last.base_offset + last.record_count
        return RawBatches(part.partition, data[at:end], count, base, pos, part.topic)


def _messages(topic: str, partition: int, mv: memoryview, at: int, h: batch.BatchHeader, skip_below: int,
              decode_headers) -> list[Message]:
    """Decode one batch into Messages, dropping offsets below ``skip_below``."""
    table, starts = batch.value_bounds(mv, at, h)
    first = max(0, skip_below - h.base_offset)
    klen = table["key_len"][first:].tolist()
    vlen = table["value_len"][first:].tolist()
    hlen = table["headers_len"][first:].tolist()
    ts = (table["ts_delta"][first:].astype(np.int64) + h.first_timestamp).tolist()
    out = []
    off = h.base_offset + first
    for i, s in enumerate(starts[first:].tolist()):
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
