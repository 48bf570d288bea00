"""Fetch-side logic of an acceptor, free of sockets.

Acceptors read segment files read-only and never past the high watermark
the owning writer last published.  A master in ``replicated`` fetch-bound
mode reads less far: only what every in-sync slave holds too (``bound``,
Kafka's high watermark as opposed to its log end), so a failover never
takes back a message a consumer saw.  That visible end never moves
backwards while the log does not shrink.  A fetch at the visible end with
a ``max_wait_ms`` parks until it moves or the wait runs out (a long poll,
as Kafka's fetch.max.wait.ms).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from hpbroker.io import OffsetOutOfRange, PartitionReader
from hpbroker.io.layout import partition_dir
from hpbroker.ipc.handoff import tp_key
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
        self.hwm: dict[str, int] = {}  # the owning writer's high watermark: durable here
        self.log_start: dict[str, int] = {}
        # None: consumers read up to hwm.  Else {key: replicated offset}, the
        # most they may read (a master's replicated watermark, see visible()).
        self.bound: dict[str, int] | None = None
        self._shown: dict[str, int] = {}  # the visible end last given out, per key
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

    def visible(self, key: str) -> int:
        """How far consumers may read ``key``: the high watermark, or less
        while ``bound`` holds it back, but never less than was given out
        before (a slave falling out of sync and back in must not hide what
        consumers already read) unless the log itself shrank."""
        v = self._end(key)
        self._shown[key] = v
        return v

    def _end(self, key: str) -> int:
        """:meth:`visible` without recording it as given out."""
        hwm = self.hwm.get(key, 0)
        if self.bound is None:
            return hwm
        return min(hwm, max(self._shown.get(key, 0), self.bound.get(key, 0)))

    def held_back(self) -> int:
        """Messages durable here that consumers may not read yet (``bound``)."""
        return sum(h - self._end(k) for k, h in self.hwm.items())

    def nothing_yet(self, key: str, offset: int) -> bool:
        """Would a fetch at ``offset`` find nothing to read, but no error
        either?  (It is at or past the visible end, within the log.)"""
        return self.log_start.get(key, 0) <= offset <= self.hwm.get(key, 0) and offset >= self.visible(key)

    def read(self, topic: str, partition: int, offset: int, max_bytes: int):
        """-> (payload bytes, visible end, log_start); raises BrokerError.

        An offset between the visible end and the high watermark is no
        error: it reads nothing, as Kafka's fetch between high watermark and
        log end does."""
        key = tp_key(topic, partition)
        hwm = self.hwm.get(key, 0)
        start = self.log_start.get(key, 0)
        if offset > hwm or offset < start:
            raise BrokerError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {offset} is outside [{start}, {hwm}] for {topic}/{partition}",
            )
        end = self.visible(key)
        if offset >= end:
            return b"", end, start
        try:
            data = self.reader(topic, partition).read(offset, min(max_bytes, self.max_fetch_bytes), end)
        except OffsetOutOfRange as e:
            raise BrokerError(ErrorCode.OFFSET_OUT_OF_RANGE, str(e)) from None
        return data, end, start

    # -- long polls ---------------------------------------------------------

    def park(self, ident: bytes, req, deadline: float) -> None:
        p = Parked(deadline, next(self._seq), ident, req)
        self._parked.setdefault(tp_key(req.topic, req.partition), []).append(p)
        heapq.heappush(self._timeouts, p)

    def woken(self, keys) -> list[Parked]:
        """The parked fetches of ``keys`` that have something to read now
        (or an error to hear); the rest stay parked."""
        out: list[Parked] = []
        for k in keys:
            ps = self._parked.get(k)
            if not ps:
                continue
            keep = []
            for p in ps:
                if p.done:
                    continue
                if self.nothing_yet(k, p.req.offset):
                    keep.append(p)
                else:
                    p.done = True
                    out.append(p)
            if keep:
                self._parked[k] = keep
            else:
                del self._parked[k]
        return out

    def parked_keys(self) -> list[str]:
        return list(self._parked)

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
