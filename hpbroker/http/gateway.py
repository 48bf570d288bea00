"""The HTTP gateway (MetaQ's HTTP broker plugin): produce and consume over HTTP.

``POST /topics/<topic>[/partitions/<p>]`` sends the body as one message, or,
with ``Content-Type: application/x-ndjson``, each non-empty line as one
message (the line's bytes, unparsed).  It becomes ordinary ``Produce``
requests to the acceptors (:class:`~hpbroker.http.brokerlink.BrokerLink`),
so the JSON reply comes after the same durable ack as on the ZeroMQ path
(``acks`` 1 or all; ``acks=0`` answers 202 at once).  A key (header
``X-Hpbroker-Key`` or ``?key=``) picks the partition as the Python producer
does; headers ``X-Hpbroker-Header-<name>`` become record headers (names
in lower case: HTTP header names carry no case).

``GET /topics/<topic>/partitions/<p>?offset=N&max_bytes=M&wait_ms=W``
answers with JSON lines, one per record from ``offset`` on (``earliest``
and ``latest`` work too), waiting up to ``wait_ms`` for the first.  Details
and examples: docs/http.md.
"""

from __future__ import annotations

import base64
import itertools

import msgspec
import numpy as np
from aiohttp import web

from hpbroker import batch
from hpbroker.client.partitioner import partition_for_key
from hpbroker.config import Config
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.stats import Slot
from hpbroker.stats import layout as L

from hpbroker.http.brokerlink import BrokerLink

NDJSON = "application/x-ndjson"
HEADER_PREFIX = "x-hpbroker-header-"
_ACKS = {"1": 1, "all": -1, "-1": -1, "0": 0}
_PRODUCED = L.COUNTER["http_produced_messages"]
_FETCHED = L.COUNTER["http_fetched_messages"]
_encode = msgspec.json.Encoder().encode


class Gateway:
    def __init__(self, cfg: Config, link: BrokerLink, slot: Slot):
        self.cfg = cfg
        self.link = link
        self.slot = slot
        self._partitions: dict[str, int] = {}
        self._rr = itertools.count()

    async def partitions(self, topic: str) -> int:
        """The topic's partition count (a Metadata request the first time,
        which creates the topic when the broker auto-creates topics)."""
        n = self._partitions.get(topic)
        if n is None:
            rep, _ = await self.link.call(lambda i: m.Metadata(id=i, topics=[topic]), timeout_s=10)
            t = next((t for t in rep.topics if t.name == topic), None)
            if t is None or t.code:
                raise BrokerError(t.code if t is not None else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                  f"unknown topic {topic!r}")
            n = self._partitions[topic] = len(t.partitions)
        return n

    # -- produce --------------------------------------------------------------------------

    async def produce(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        body = await request.read()
        values = _messages(body, request.content_type == NDJSON)
        if not values:
            raise BrokerError(ErrorCode.BAD_REQUEST, "no message in the body (an ndjson body needs a non-empty line)")
        acks = _ACKS.get(request.query.get("acks", "1"))
        if acks is None:
            raise BrokerError(ErrorCode.BAD_REQUEST, "acks must be 0, 1 or all")
        key = request.headers.get("X-Hpbroker-Key", request.query.get("key"))
        keyb = None if key is None else key.encode()
        n = await self.partitions(topic)
        p = request.match_info.get("partition")
        if p is not None:
            partition = _int(p, "partition")
            if not 0 <= partition < n:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic} has partitions 0..{n - 1}, not {partition}")
        else:
            partition = partition_for_key(keyb, n) if keyb is not None else next(self._rr) % n
        pairs = [(k[len(HEADER_PREFIX):].lower(), v.encode()) for k, v in request.headers.items()
                 if k.lower().startswith(HEADER_PREFIX)]
        blob = batch.encode_headers(pairs) if pairs else None
        offsets, last = [], -1
        for frames, count in _requests(values, keyb, blob, self.cfg.broker.max_batch_bytes, self.cfg.broker.max_request_bytes):
            def make(i, frames=frames):
                return m.Produce(id=i, topic=topic, partition=partition, acks=acks,
                                 timeout_ms=self.cfg.http.produce_timeout_ms)
            if acks == 0:
                await self.link.send(make, frames)
                continue
            rep, _ = await self.link.call(make, frames, timeout_s=self.cfg.http.produce_timeout_ms / 1000 + 5)
            offsets += rep.base_offsets
            last = rep.base_offsets[-1] + count - 1 if rep.base_offsets else -1
        if acks == 0:
            return web.Response(status=202, body=_encode({"topic": topic, "partition": partition, "count": len(values)}),
                                content_type="application/json")
        self.slot.add(_PRODUCED, len(values))
        return web.Response(body=_encode({"topic": topic, "partition": partition, "count": len(values),
                                          "base_offset": offsets[0], "last_offset": last, "offsets": offsets}),
                            content_type="application/json")

    # -- consume --------------------------------------------------------------------------

    async def consume(self, request: web.Request) -> web.StreamResponse:
        topic = request.match_info["topic"]
        partition = _int(request.match_info["partition"], "partition")
        q = request.query
        max_bytes = min(_int(q.get("max_bytes", str(1 << 20)), "max_bytes"), self.cfg.broker.max_fetch_bytes)
        wait_ms = min(_int(q.get("wait_ms", "0"), "wait_ms"), self.cfg.http.max_wait_ms)
        text = q.get("format", "base64") == "text"
        if q.get("format", "base64") not in ("base64", "text"):
            raise BrokerError(ErrorCode.BAD_REQUEST, "format must be base64 or text")
        if max_bytes < 1:
            raise BrokerError(ErrorCode.BAD_REQUEST, "max_bytes must be at least 1")
        offset = await self._offset(topic, partition, q.get("offset", "earliest"))
        rep, frames = await self.link.call(
            lambda i: m.Fetch(id=i, topic=topic, partition=partition, offset=offset, max_bytes=max_bytes,
                              max_wait_ms=max(0, wait_ms), min_bytes=1),
            timeout_s=wait_ms / 1000 + 30)
        data = frames[0] if frames else b""
        lines = []
        for pos, _ in batch.iter_batches(data):
            for r in batch.records_of(data, pos):
                if r.offset >= offset:
                    lines.append(_encode(_record(r, text)))
        self.slot.add(_FETCHED, len(lines))
        nxt = rep.next_offset if rep.next_offset >= 0 else offset
        headers = {"X-Hpbroker-Next-Offset": str(nxt), "X-Hpbroker-High-Watermark": str(rep.high_watermark),
                   "X-Hpbroker-Log-Start-Offset": str(rep.log_start_offset)}
        return web.Response(body=b"".join(line + b"\n" for line in lines), content_type=NDJSON, headers=headers)

    async def _offset(self, topic: str, partition: int, spec: str) -> int:
        if spec in ("earliest", "latest"):
            rep, _ = await self.link.call(lambda i: m.ListOffsets(id=i, topic=topic, partition=partition,
                                                                 spec=m.EARLIEST if spec == "earliest" else m.LATEST))
            return rep.offset
        offset = _int(spec, "offset")
        if offset < 0:
            raise BrokerError(ErrorCode.BAD_REQUEST, "offset must be >= 0, earliest or latest")
        return offset


def _int(s: str, what: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise BrokerError(ErrorCode.BAD_REQUEST, f"{what} must be an integer, got {s[:40]!r}") from None


def _messages(body: bytes, ndjson: bool) -> list[bytes]:
    if not ndjson:
        return [body]
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")
    return [line for line in body.split(b"\n") if line]


def _requests(values: list[bytes], key: bytes | None, headers: bytes | None, max_batch: int, max_request: int):
    """``values`` as (batch frames, records in the last batch): each list
    within one request's limit, each batch within the batch limit, in order."""
    per = batch.ENTRY_SIZE + (len(key) if key else 0) + (len(headers) if headers else 0)
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values)) + per
    if int(sizes.max()) + batch.HEADER_SIZE > max_batch:
        raise BrokerError(ErrorCode.MESSAGE_TOO_LARGE, f"a message of {int(sizes.max()) - per} bytes does not fit "
                                                       f"one batch (broker.max_batch_bytes = {max_batch})")
    ends = np.cumsum(sizes)
    frames, start, request_bytes, last_count = [], 0, 0, 0
    while start < len(values):
        base = int(ends[start - 1]) if start else 0
        stop = int(np.searchsorted(ends, base + max_batch - batch.HEADER_SIZE, side="right"))
        chunk = values[start:stop]
        b = batch.encode_batch(chunk, None if key is None else [key] * len(chunk),
                               headers=None if headers is None else [headers] * len(chunk))
        if frames and request_bytes + len(b) > max_request:
            yield frames, last_count
            frames, request_bytes = [], 0
        frames.append(b)
        request_bytes += len(b)
        last_count = len(chunk)
        start = stop
    if frames:
        yield frames, last_count


def _record(r: batch.Record, text: bool) -> dict:
    def enc(b: bytes | None):
        if b is None:
            return None
        return b.decode("utf-8", "replace") if text else base64.b64encode(b).decode()

    out = {"offset": r.offset, "timestamp": r.timestamp, "key": enc(r.key), "value": enc(r.value)}
    if r.headers:
        out["headers"] = [[name, enc(value)] for name, value in batch.decode_headers(r.headers)]
    return out
