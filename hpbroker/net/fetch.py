"""Fetch-side logic of an acceptor, free of sockets.

Acceptors read segment files read-only and never past the high watermark
the owning writer last published.  A fetch at the high watermark with a
``max_wait_ms`` parks until the watermark moves or the wait runs out
(a long poll, as Kafka's fetch.max.wait.ms).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from hpbroker.io import OffsetOutOfRange, PartitionReader
from hpbroker.io.layout import partition_dir
from hpbroker.net.handoff import tp_key
from hpbroker.protocol.errors import BrokerError, ErrorCode


@dataclass(order=True)
class Parked:
    deadline: float
    seq: int
    ident: bytes = field(compare=False)
    req: object = field(compare=False)
    done: bool = field(default=False, compare=False)


class FetchService:
    def __init__(self, data_dir: Path, max_fetch_bytes: int):
        self.data_dir = Path(data_dir)
        self.max_fetch_bytes = max_fetch_bytes
        self.hwm: dict[str, int] = {}
        self.log_start: dict[str, int] = {}
        self._readers: dict[str, PartitionReader] = {}
        self._parked: dict[str, list[Parked]] = {}
        self._timeouts: list[Parked] = []
        self._seq = itertools.count()

    def reader(self, topic: str, partition: int) -> PartitionReader:
        key = tp_key(topic, partition)
        r = self._readers.get(key)
        if r is None:
            r = self._readers[key] = PartitionReader(partition_dir(str(self.data_dir), topic, partition))
        return r

    def update(self, hwm: dict[str, int], log_start: dict[str, int]) -> list[str]:
        """Record a writer's new watermarks; return the keys that moved."""
        moved = [k for k, v in hwm.items() if self.hwm.get(k) != v]
        self.hwm.update(hwm)
        self.log_start.update(log_start)
        return moved

    def read(self, topic: str, partition: int, offset: int, max_bytes: int):
        """-> (payload bytes, hwm, log_start); raises BrokerError."""
        key = tp_key(topic, partition)
        hwm = self.hwm.get(key, 0)
        start = self.log_start.get(key, 0)
        if offset > hwm or offset < start:
            raise BrokerError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {offset} is outside [{start}, {hwm}] for {topic}/{partition}",
            )
        if offset == hwm:
            return b"", hwm, start
        try:
            data = self.reader(topic, partition).read(offset, min(max_bytes, self.max_fetch_bytes), hwm)
        except OffsetOutOfRange as e:
            raise BrokerError(ErrorCode.OFFSET_OUT_OF_RANGE, str(e)) from None
        return data, hwm, start

    # -- long polls ---------------------------------------------------------

    def park(self, ident: bytes, req, deadline: float) -> None:
        p = Parked(deadline, next(self._seq), ident, req)
        self._parked.setdefault(tp_key(req.topic, req.partition), []).append(p)
        heapq.heappush(self._timeouts, p)

    def woken(self, keys: list[str]) -> list[Parked]:
        out: list[Parked] = []
        for k in keys:
            for p in self._parked.pop(k, ()):
                if not p.done:
                    p.done = True
                    out.append(p)
        return out

    def timed_out(self, now: float) -> list[Parked]:
        out = []
        while self._timeouts and self._timeouts[0].deadline <= now:
            p = heapq.heappop(self._timeouts)
            if not p.done:
                p.done = True
                out.append(p)
                key = tp_key(p.req.topic, p.req.partition)
                lst = self._parked.get(key)
                if lst is not None:
                    lst.remove(p)
                    if not lst:
                        del self._parked[key]
        return out

    def next_deadline(self) -> float | None:
        while self._timeouts and self._timeouts[0].done:
            heapq.heappop(self._timeouts)
        return self._timeouts[0].deadline if self._timeouts else None

    def all_parked(self) -> list[Parked]:
        out = [p for ps in self._parked.values() for p in ps if not p.done]
        for p in out:
            p.done = True
        self._parked.clear()
        return out
