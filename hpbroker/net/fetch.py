"""Fetch-side logic of an acceptor, free of sockets.

Acceptors read segment files read-only and never past the high watermark
the owning writer last published.  A master in ``replicated`` fetch-bound
mode reads less far: only what every in-sync slave holds too (``bound``,
Kafka's high watermark as opposed to its log end), so a failover never
takes back a message a consumer saw.  That visible end never moves
backwards while the log does not shrink.

A fetch with a ``max_wait_ms`` that finds fewer than ``min_bytes`` of whole
batches from its offset parks until that much is there (at most its
``max_bytes``) or the wait runs out, then gets what there is: a long poll, as
Kafka's fetch.min.bytes and fetch.max.wait.ms.  A parked fetch keeps what it
has read so far and, each time its partition's visible end moves (once per
group commit, not per message), reads only the batches that arrived since,
so every byte is read once however many commits it waits for.  A fetch
with the default ``min_bytes`` of 1 reads nothing until it is answered.

:meth:`FetchService.start` takes a new fetch; :meth:`woken`,
:meth:`timed_out` and :meth:`all_parked` hand back the parked ones that
are due, and :meth:`answer` gives the reply's contents for any of them.

A fetch with a server-side filter (:mod:`hpbroker.protocol.filters`) takes
a path of its own, and only such a fetch does: the others keep the bytes
the reader returned and send them as they are.  It reads on past batches
the filter empties, up to ``max_filter_scan_bytes`` of log per reply, and
keeps only the matching records; its ``min_bytes`` counts those, so a long
poll on a partition where nothing matches waits out its ``max_wait_ms`` (or
until it has read that much) instead of answering every write with
nothing.  The reply says where the next fetch starts (``next_offset``),
past everything it read.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from hpbroker import batch
from hpbroker.io import OffsetOutOfRange, PartitionReader
from hpbroker.io.layout import partition_dir
from hpbroker.ipc.handoff import tp_key
from hpbroker.protocol import filters
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.acceptor")


@dataclass(order=True)
class Parked:
    deadline: float
    seq: int
    ident: bytes = field(compare=False)
    req: object = field(compare=False)
    done: bool = field(default=False, compare=False)
    #: whole batches read so far, from the one holding req.offset, in order
    chunks: list = field(default_factory=list, compare=False)
    nbytes: int = field(default=0, compare=False)
    #: where the next read starts: req.offset, then past the last batch read
    next_offset: int = field(default=-1, compare=False)
    #: no further batch fits the request's max_bytes
    full: bool = field(default=False, compare=False)
    #: a read failed before anything was gathered: the reply is this error
    error: BrokerError | None = field(default=None, compare=False)
    #: the request's server-side filter (None: the zero-copy path)
    flt: filters.Filter | None = field(default=None, compare=False)
    #: bytes of log read so far (filtered fetches: bounded by max_filter_scan_bytes)
    scanned: int = field(default=0, compare=False)

    def __post_init__(self):
        if self.next_offset < 0:
            self.next_offset = self.req.offset

    def reset(self) -> None:
        self.chunks.clear()
        self.nbytes = 0
        self.next_offset = self.req.offset
        self.full = False
        self.scanned = 0


#: compiled filters kept per acceptor, by their msgpack (a consumer sends the same one every fetch)
FILTER_CACHE = 256


class FetchService:
    def __init__(self, data_dir: Path, max_fetch_bytes: int, max_filter_scan_bytes: int = 4 << 20):
        self.data_dir = Path(data_dir)
        self.max_fetch_bytes = max_fetch_bytes
        self.max_filter_scan_bytes = max_filter_scan_bytes
        self._filters: dict[bytes, filters.Filter] = {}
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
        # fetches due for an answer, by id() of their request (answer() takes them)
        self._due: dict[int, Parked] = {}
        self._corrupt_seen: set[tuple] = set()  # (topic, partition, what) already logged

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

    # -- fetch requests and long polls ---------------------------------------

    def filter_of(self, req) -> filters.Filter | None:
        """The request's filter, parsed and checked (None without one);
        BrokerError BAD_REQUEST saying what is wrong with a bad one."""
        raw = req.filter
        if raw is msgspec.UNSET:
            return None
        key = bytes(memoryview(raw)[:filters.MAX_FILTER_BYTES + 1])
        flt = self._filters.get(key)
        if flt is None:
            try:
                flt = filters.from_fetch(raw)
            except filters.FilterError as e:
                raise BrokerError(ErrorCode.BAD_REQUEST, f"bad filter: {e}") from None
            if flt is None:
                return None
            if len(self._filters) >= FILTER_CACHE:
                del self._filters[next(iter(self._filters))]
            self._filters[key] = flt
        return flt

    def start(self, ident: bytes, req, now: float, wait: bool = True, flt: filters.Filter | None = None) -> bool:
        """Take a new Fetch: True when it parked (a long poll that found less
        than its min_bytes), False when :meth:`answer` has its reply now.
        ``flt``: its :meth:`filter_of`.  Raises BrokerError (an offset out
        of range) without parking."""
        p = Parked(now + req.max_wait_ms / 1000.0, next(self._seq), ident, req, flt=flt)
        if wait and req.max_wait_ms > 0 and req.min_bytes > 0:
            self._gather(p)
            if not self._enough(p):
                self.park(p)
                return True
        p.done = True
        self._due[id(req)] = p
        return False

    def answer(self, req) -> tuple[bytes, int, int, int]:
        """-> (payload, visible end, log_start, next offset) for a fetch that
        :meth:`start` did not park, or that :meth:`woken`, :meth:`timed_out`
        or :meth:`all_parked` handed back; raises BrokerError.  What arrived
        since its last read is added (within its max_bytes)."""
        key = tp_key(req.topic, req.partition)
        p = self._due.pop(id(req), None)
        if p is None:
            p = Parked(0.0, 0, b"", req, flt=self.filter_of(req))
        if p.error is not None:
            raise p.error
        try:
            self._gather(p)
        except BrokerError:
            if not p.nbytes:
                raise
            # what was read before stays good (it was committed); the log
            # moved on under the rest, which the next fetch will hear about
        data = p.chunks[0] if len(p.chunks) == 1 else b"".join(p.chunks)
        return data, self.visible(key), self.log_start.get(key, 0), p.next_offset

    def _budget(self, req) -> int:
        return min(req.max_bytes, self.max_fetch_bytes)

    def _enough(self, p: Parked) -> bool:
        return p.full or p.nbytes >= min(p.req.min_bytes, self._budget(p.req))

    def _gather(self, p: Parked) -> None:
        """Read into ``p`` the whole batches that became visible past its
        ``next_offset``, within its max_bytes.  Raises BrokerError."""
        if p.flt is not None:
            return self._gather_filtered(p)
        req = p.req
        key = tp_key(req.topic, req.partition)
        if p.next_offset > self.hwm.get(key, 0):
            p.reset()  # the log shrank under what was read (a slave's truncation): read again
        if p.full or (p.nbytes and p.next_offset >= self._end(key)):
            return  # (with nothing read yet, read() checks the offset's range)
        room = self._budget(req) - p.nbytes
        data, _, _ = self.read(req.topic, req.partition, p.next_offset, max(room, 1))
        if not data:
            return
        if p.nbytes and len(data) > room:
            p.full = True  # the next batch alone is over what is left of max_bytes: keep it for the next fetch
            return
        p.chunks.append(data)
        p.nbytes += len(data)
        p.next_offset = _next_offset(data)
        if p.nbytes >= self._budget(req):
            p.full = True

    def _gather_filtered(self, p: Parked) -> None:
        """:meth:`_gather` for a fetch with a filter: read on from
        ``next_offset`` until caught up with the visible end, or the
        matching records fill max_bytes, or ``max_filter_scan_bytes`` of log
        were read for this reply; keep only the matching records.
        ``next_offset`` ends past everything read.  Raises BrokerError."""
        req = p.req
        key = tp_key(req.topic, req.partition)
        if p.next_offset > self.hwm.get(key, 0):
            p.reset()
        budget = self._budget(req)
        scan = self.max_filter_scan_bytes
        while not p.full:
            if p.scanned and p.next_offset >= self._end(key):
                return
            chunk = max(1, min(budget, scan - p.scanned))
            data, _, _ = self.read(req.topic, req.partition, p.next_offset, chunk)
            if not data:
                return
            try:
                pieces, nbytes, nxt, stopped = filters.select(data, p.flt, req.offset, budget - p.nbytes,
                                                              at_least_one=not p.nbytes)
            except batch.CorruptBatch as e:
                raise self._corrupt(req, e) from None
            p.chunks.extend(pieces)
            p.nbytes += nbytes
            p.scanned += len(data)
            if nxt >= 0:
                p.next_offset = nxt
            if stopped or p.nbytes >= budget or p.scanned >= scan:
                p.full = True

    def _corrupt(self, req, e: batch.CorruptBatch) -> BrokerError:
        """A stored batch a filtered fetch met that fails its CRC: the
        consumer gets CORRUPT_STORED_BATCH, and the acceptor's log says so
        once per partition and offset (a consumer retrying does not flood it)."""
        msg = f"{req.topic}/{req.partition}: {e}: the log is damaged at rest there (hpbroker log verify names the file)"
        where = (req.topic, req.partition, str(e))
        if where not in self._corrupt_seen:
            if len(self._corrupt_seen) > 1000:
                self._corrupt_seen.clear()
            self._corrupt_seen.add(where)
            log.error("fetch: %s", msg)
        return BrokerError(ErrorCode.CORRUPT_STORED_BATCH, msg)

    def park(self, p_or_ident, req=None, deadline: float | None = None) -> None:
        """Park a :class:`Parked` (or ``ident, req, deadline`` for one that has read nothing yet)."""
        p = p_or_ident if req is None else Parked(deadline, next(self._seq), p_or_ident, req)
        self._parked.setdefault(tp_key(p.req.topic, p.req.partition), []).append(p)
        heapq.heappush(self._timeouts, p)

    def woken(self, keys) -> list[Parked]:
        """The parked fetches of ``keys`` that are due now: they hold their
        min_bytes (or their max_bytes), or have an error to hear; the rest
        stay parked.  Called when the keys' visible ends moved."""
        out: list[Parked] = []
        for k in keys:
            ps = self._parked.get(k)
            if not ps:
                continue
            keep = []
            for p in ps:
                if p.done:
                    continue
                if self._due_now(k, p):
                    p.done = True
                    self._due[id(p.req)] = p
                    out.append(p)
                else:
                    keep.append(p)
            if keep:
                self._parked[k] = keep
            else:
                del self._parked[k]
        return out

    def _due_now(self, key: str, p: Parked) -> bool:
        if p.req.min_bytes <= 1 and not p.nbytes and p.flt is None:
            # anything at all will do: answer() reads it, nothing is read twice
            return not self.nothing_yet(key, p.req.offset)
        try:
            self._gather(p)
        except BrokerError as e:
            if p.nbytes:
                p.full = True  # answer with what was read before
            else:
                p.error = e
            return True
        return self._enough(p)

    def parked_keys(self) -> list[str]:
        return list(self._parked)

    def parked_count(self) -> int:
        return len(self._parked)

    def timed_out(self, now: float) -> list[Parked]:
        out = []
        while self._timeouts and self._timeouts[0].deadline <= now:
            p = heapq.heappop(self._timeouts)
            if not p.done:
                p.done = True
                self._due[id(p.req)] = p
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
            self._due[id(p.req)] = p
        self._parked.clear()
        return out


def _next_offset(data) -> int:
    """The offset after the last of the whole batches in ``data``."""
    pos = 0
    last = 0
    n = len(data)
    while pos + batch.HEADER_SIZE <= n:
        last = pos
        pos += max(batch.peek_length(data, pos), batch.HEADER_SIZE)
    return batch.peek_base_offset(data, last) + batch.peek_count(data, last)
