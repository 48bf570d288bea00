"""``Consumer``: long-poll fetches per partition, decoded or raw.

Single-threaded like kafka-python's consumer: the caller's thread owns the
sockets.  For every assigned partition at most one Fetch is in flight; as
soon as its reply arrives (inside :meth:`poll`) the next Fetch is sent, so
the broker is already waiting for more while the caller works through the
last reply (one reply is buffered per partition).  :meth:`seek` forgets
the in-flight fetch of that partition (its late reply is ignored).

A fetch returns whole batches, so one that starts in the middle of a batch
also returns the records before the requested offset; :meth:`poll` skips
them, :meth:`poll_batches` reports them (``RawBatches.start_offset``).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterable, Iterator

import numpy as np

from hpbroker import batch
from hpbroker.client.cluster import topic_partitions
from hpbroker.client.records import Message, RawBatches
from hpbroker.client.transport import Transport
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import EARLIEST, LATEST, Fetch, FetchReply, ListOffsets


class _Part:
    __slots__ = ("partition", "position", "fetch_id", "fetch_offset", "buffer", "decoded", "error")

    def __init__(self, partition: int):
        self.partition = partition
        self.position: int | None = None  # next offset to hand out
        self.fetch_id: int | None = None  # the fetch in flight
        self.fetch_offset = 0  # where the next fetch starts
        self.buffer: deque = deque()  # (memoryview, pos) of received batches not yet handed out
        self.decoded: deque = deque()  # Messages decoded from the current batch
        self.error: BrokerError | None = None


class Consumer:
    def __init__(
        self,
        bootstrap: str = "tcp://127.0.0.1:7600",
        topic: str | None = None,
        *,
        partitions: Iterable[int] | None = None,
        auto_offset_reset: str = "latest",
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 1 << 20,
        fetch_min_bytes: int = 1,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 10_000,
        consumer_timeout_ms: float | None = None,
        max_reply_bytes: int = 64 << 20,
    ):
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise ValueError("auto_offset_reset must be 'earliest', 'latest' or 'none'")
        if topic is None:
            raise ValueError("a Consumer needs a topic")
        self.topic = topic
        self.auto_offset_reset = auto_offset_reset
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_max_bytes = fetch_max_bytes
        self.fetch_min_bytes = fetch_min_bytes
        self.consumer_timeout_ms = consumer_timeout_ms
        self._t = Transport(bootstrap, request_timeout_ms=request_timeout_ms, max_reply_bytes=max_reply_bytes,
                            readers=True)
        self.connect_timeout_ms = connect_timeout_ms
        self._lost = False  # a broker did not answer: with several, find the one to read from again
        self._parts: dict[int, _Part] = {}
        self._rr = 0
        try:
            md = self._t.metadata([topic], timeout_ms=connect_timeout_ms)
            self.partition_count = topic_partitions(md, topic)
            self.assign(range(self.partition_count) if partitions is None else partitions)
        except BaseException:
            self._t.close()
            raise

    # -- assignment and positions -----------------------------------------------------------

    def assign(self, partitions: Iterable[int]) -> None:
        """Consume exactly these partitions of the topic (positions of
        partitions kept from the old assignment are kept)."""
        new = {}
        for p in partitions:
            if not 0 <= p < self.partition_count:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{self.topic!r} has no partition {p}")
            new[p] = self._parts.get(p) or _Part(p)
        for p, part in self._parts.items():
            if p not in new and part.fetch_id is not None:
                self._t.forget(part.fetch_id)
        self._parts = new

    def assignment(self) -> set[int]:
        return set(self._parts)

    def position(self, partition: int) -> int:
        part = self._part(partition)
        if part.position is None:
            self._reset(part)
        return part.position

    def seek(self, partition: int, offset: int) -> None:
        part = self._part(partition)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self._move(part, offset)

    def seek_to_beginning(self, *partitions: int) -> None:
        self._seek_spec(partitions, EARLIEST)

    def seek_to_end(self, *partitions: int) -> None:
        self._seek_spec(partitions, LATEST)

    def offsets_for_times(self, timestamps: dict[int, int]) -> dict[int, int]:
        """{partition: first offset whose batch has max_timestamp >= ts}
        (the high watermark when there is none)."""
        return {p: self._list_offset(p, ts) for p, ts in timestamps.items()}

    def beginning_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        return {p: self._list_offset(p, EARLIEST) for p in (partitions if partitions is not None else self._parts)}

    def end_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        return {p: self._list_offset(p, LATEST) for p in (partitions if partitions is not None else self._parts)}

    # -- reading ----------------------------------------------------------------------------------

    def poll(self, timeout_ms: float = 0, max_records: int = 500) -> list[Message]:
        """Up to ``max_records`` messages, waiting up to ``timeout_ms`` for
        the first ones; [] when nothing arrived in time."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            out: list[Message] = []
            parts = self._rotation()
            for part in parts:
                if len(out) >= max_records:
                    break
                self._take_messages(part, max_records - len(out), out)
            if out:
                self._fetch_all()
                return out
            if not self._wait(deadline):
                return out

    def poll_batches(self, timeout_ms: float = 0, max_bytes: int = 64 << 20) -> list[RawBatches]:
        """Raw fast path: whole batches as received, per partition, with no
        per-record Python work (one ``RawBatches`` per partition with data;
        the total is capped by ``max_bytes`` but at least one batch)."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            out: list[RawBatches] = []
            budget = max_bytes
            for part in self._rotation():
                if budget <= 0 and out:
                    break
                rb = self._take_raw(part, budget if out else max(budget, 1))
                if rb is not None:
                    out.append(rb)
                    budget -= len(rb.data)
            if out:
                self._fetch_all()
                return out
            if not self._wait(deadline):
                return out

    def __iter__(self) -> Iterator[Message]:
        """Messages forever (or until ``consumer_timeout_ms`` passes with none)."""
        idle_since = time.monotonic()
        while True:
            msgs = self.poll(timeout_ms=self.fetch_max_wait_ms or 100, max_records=1000)
            if msgs:
                yield from msgs
                idle_since = time.monotonic()
            elif self.consumer_timeout_ms is not None and (time.monotonic() - idle_since) * 1000 >= self.consumer_timeout_ms:
                return

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _part(self, partition: int) -> _Part:
        try:
            return self._parts[partition]
        except KeyError:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {partition} is not assigned") from None

    def _rotation(self) -> list[_Part]:
        parts = list(self._parts.values())
        if not parts:
            return parts
        self._rr = (self._rr + 1) % len(parts)
        return parts[self._rr :] + parts[: self._rr]

    def _list_offset(self, partition: int, spec: int) -> int:
        req = ListOffsets(id=self._t.next_id(), topic=self.topic, partition=partition, spec=spec)
        rep, _ = self._t.call(self._t.endpoint_for(partition), req)
        return rep.offset

    def _seek_spec(self, partitions, spec: int) -> None:
        for p in partitions or list(self._parts):
            part = self._part(p)
            self._move(part, self._list_offset(p, spec))

    def _move(self, part: _Part, offset: int) -> None:
        if part.fetch_id is not None:
            self._t.forget(part.fetch_id)
            part.fetch_id = None
        part.buffer.clear()
        part.decoded.clear()
        part.error = None
        part.position = offset
        part.fetch_offset = offset

    def _reset(self, part: _Part) -> None:
        if self.auto_offset_reset == "none":
            raise BrokerError(ErrorCode.OFFSET_OUT_OF_RANGE, f"no position for partition {part.partition} and auto_offset_reset='none'")
        spec = EARLIEST if self.auto_offset_reset == "earliest" else LATEST
        self._move(part, self._list_offset(part.partition, spec))

    def _fetch_all(self) -> None:
        if self._lost:
            self._lost = False
            self._t.discover_now(self.connect_timeout_ms)  # None: try the same ones again
        for part in self._parts.values():
            if part.position is None:
                self._reset(part)
            if part.fetch_id is None and not part.buffer and part.error is None:
                self._send_fetch(part)

    def _send_fetch(self, part: _Part) -> None:
        rid = self._t.next_id()
        req = Fetch(id=rid, topic=self.topic, partition=part.partition, offset=part.fetch_offset,
                    max_bytes=self.fetch_max_bytes, max_wait_ms=self.fetch_max_wait_ms, min_bytes=self.fetch_min_bytes)
        part.fetch_id = rid
        self._t.send(self._t.endpoint_for(part.partition), req,
                     on_reply=lambda rep, payloads: self._on_fetch(part, rid, rep, payloads),
                     timeout_ms=self._t.request_timeout_ms + self.fetch_max_wait_ms)

    def _on_fetch(self, part: _Part, rid: int, rep, payloads) -> None:
        if part.fetch_id != rid:
            return  # seek() or assign() moved on
        part.fetch_id = None
        if rep.code == ErrorCode.OFFSET_OUT_OF_RANGE and self.auto_offset_reset != "none":
            part.position = None  # _fetch_all resets it
            return
        if rep.code in (ErrorCode.REQUEST_TIMED_OUT, ErrorCode.BUSY, ErrorCode.BROKER_SHUTTING_DOWN, ErrorCode.NOT_LEADER):
            if rep.code != ErrorCode.BUSY and self._t.several:
                self._lost = True  # maybe failed over: ask every broker which one to read from
            return  # retried by the next _fetch_all
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

    def _wait(self, deadline: float) -> bool:
        """Make sure fetches are out, then wait for replies; False once the
        deadline passed with nothing buffered."""
        self._fetch_all()
        for part in self._parts.values():
            if part.error is not None:
                err, part.error = part.error, None
                raise err
        left = (deadline - time.monotonic()) * 1000.0
        if left <= 0:
            return False
        self._t.poll(left)
        return True

    def _take_messages(self, part: _Part, limit: int, out: list) -> None:
        pos = part.position
        if pos is None:
            return
        while limit > 0:
            if not part.decoded:
                if not part.buffer:
                    break
                data, at = part.buffer[0]
                h = batch.read_header(data, at)
                nxt = at + h.batch_length
                if nxt >= len(data):
                    part.buffer.popleft()
                else:
                    part.buffer[0] = (data, nxt)
                if h.base_offset + h.record_count <= pos:
                    continue
                part.decoded.extend(_messages(self.topic, part.partition, data, at, h, pos))
                continue
            take = min(limit, len(part.decoded))
            chunk = [part.decoded.popleft() for _ in range(take)]
            out.extend(chunk)
            limit -= take
            pos = chunk[-1].offset + 1
        part.position = pos

    def _take_raw(self, part: _Part, budget: int) -> RawBatches | None:
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
        return RawBatches(part.partition, data[at:end], count, base, pos)


def _messages(topic: str, partition: int, mv: memoryview, at: int, h: batch.BatchHeader, skip_below: int) -> list[Message]:
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
            key = mv[s : s + k].tobytes()
            s += k
        e = s + vlen[i]
        hd = mv[e : e + hlen[i]].tobytes() if hlen[i] else None
        out.append(Message(topic, partition, off + i, key, mv[s:e].tobytes(), ts[i], hd))
    return out
