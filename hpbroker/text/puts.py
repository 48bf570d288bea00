"""Puts: gathered per partition for one turn of the loop, sent as one
Produce request each, answered in order once acknowledged.

The unit of work is a *run*: the puts of one connection read together (a
:class:`~hpbroker.text.parser.PutRun`, or a single put).  A run takes one
answer slot; its answers are formatted per batch and joined, so the Python
work per message is what cannot be avoided: reading its line, checking
its CRC when it sent one, and formatting its answer.

====================  =======================================================
step                  where
====================  =======================================================
check                 :meth:`Puts.add_run` (topic, partition, CRC, attribute)
gather                a _Group per (topic, partition), this turn's runs
send                  :meth:`Puts.flush`: records.build_batch per batch
                      (msgIds, ``metaq.id`` headers), Produce per partition
acknowledge           :meth:`Puts._produced`; then each batch's MetaQ offset
                      (offsets.PartitionView.record_position, which may
                      need a scan: deferred, resumed each turn)
answer                ``result 200 len opaque`` + ``msgId partition offset``
====================  =======================================================
"""

from __future__ import annotations

import logging
import time

import numpy as np

try:  # ISA-L's CRC32 (SIMD): a quarter of zlib's time on a 256-byte body
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; the same CRC, slower
    from zlib import crc32

from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.text import records
from hpbroker.text import replies as R
from hpbroker.text.connection import Connection, Slot
from hpbroker.text.offsets import PENDING

log = logging.getLogger("hpbroker.text")

#: what a batch adds to each put body beyond MetaQ's 20-byte header: its record table entry
_RECORD_EXTRA = 16 - records.MESSAGE_HEADER

#: hpbroker error codes -> MetaQ status
_STATUS = {
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: R.NOT_FOUND,
    ErrorCode.MESSAGE_TOO_LARGE: R.BAD_REQUEST,
    ErrorCode.CORRUPT_BATCH: R.BAD_REQUEST,
    ErrorCode.BAD_REQUEST: R.BAD_REQUEST,
    ErrorCode.NOT_LEADER: R.FORBIDDEN,
    ErrorCode.BUSY: R.UNAVAILABLE,
    ErrorCode.BROKER_SHUTTING_DOWN: R.UNAVAILABLE,
    ErrorCode.NOT_ENOUGH_REPLICAS: R.UNAVAILABLE,
    ErrorCode.REQUEST_TIMED_OUT: R.TIMEOUT,
}


def status_of(code: int) -> int:
    return _STATUS.get(code, R.INTERNAL)


class _Run:
    """The puts one slot answers: their opaques, and the answers known so far."""

    __slots__ = ("conn", "slot", "opaques", "pieces", "left")

    def __init__(self, conn: Connection, slot: Slot, opaques: list):
        self.conn, self.slot, self.opaques = conn, slot, opaques
        self.pieces: list = []  # (first index, joined answers)
        self.left = len(opaques)

    def answer(self, start: int, data: bytes, count: int, touched: set) -> None:
        self.pieces.append((start, data))
        self.left -= count
        if not self.left:
            pieces = self.pieces
            if len(pieces) > 1:
                pieces.sort(key=lambda p: p[0])
            self.slot.fill(0, b"".join([p[1] for p in pieces]) if len(pieces) > 1 else pieces[0][1])
            touched.add(self.conn)


class _Group:
    """This turn's puts for one partition."""

    __slots__ = ("bodies", "flags", "segments", "any_flag")

    def __init__(self):
        self.bodies: list = []
        self.flags: list | None = None  # None: all 0
        self.segments: list = []  # (run, first put of the run, index of that put in bodies, count)
        self.any_flag = False


class _Chunk:
    """One batch of a Produce request: its puts' runs, first msgId and sizes."""

    __slots__ = ("segments", "first_id", "sizes", "crc", "count")

    def __init__(self, segments, first_id, sizes, crc):
        self.segments, self.first_id, self.sizes, self.crc = segments, first_id, sizes, crc
        self.count = len(sizes)


class Puts:
    def __init__(self, svc):
        self.svc = svc
        t = svc.t
        self.acks = -1 if t.acks == "all" else 1
        self.timeout_ms = t.put_timeout_ms
        self.batch_limit = svc.cfg.broker.max_batch_bytes - 1024
        self.request_limit = svc.cfg.broker.max_request_bytes - 1024
        self.groups: dict[tuple[str, int], _Group] = {}

    # -- gathering ----------------------------------------------------------------------

    def add_run(self, conn: Connection, run) -> None:
        """A PutRun: checked as a whole; one bad put sends the run down the one-by-one path."""
        svc = self.svc
        n = len(run.bodies)
        topic = run.topic
        if run.flags is not None or run.partition < -1 or not svc.topic_ok(topic):
            return self.add_puts(conn, run.puts())
        if run.checksums is not None:
            got = np.fromiter(map(crc32, run.bodies), dtype=np.int64, count=n) & 0x7FFFFFFF
            want = np.asarray(run.checksums, dtype=np.int64)
            if not ((got == want) | (want == -1)).all():
                return self.add_puts(conn, run.puts())
        size = sum(map(len, run.bodies))
        c = svc.counters
        c["cmd_put"] += n
        c["put_runs"] += 1
        svc.realtime.add("put", topic, n, n)
        svc.realtime.add("message_size", topic, n, size)
        partition = run.partition if run.partition >= 0 else svc.any_partition(topic)
        slot = conn.add(Slot(1, size))
        self._gather(topic, partition, _Run(conn, slot, run.opaques), run.bodies, None)

    def add_puts(self, conn: Connection, puts: list) -> None:
        """Puts one by one (attributes, flags, bad fields, transaction keys): one slot each."""
        svc = self.svc
        c = svc.counters
        for p in puts:
            c["cmd_put"] += 1
            svc.realtime.add("put", p.topic, 1, 1)
            svc.realtime.add("message_size", p.topic, 1, len(p.body))
            slot = conn.add(Slot(1, len(p.body)))
            why = svc.check_put(p)
            if why is not None:
                c["put_failed"] += 1
                svc.realtime.add("put_failed", p.topic, 1, 1)
                slot.fill(0, R.error(why[0], p.opaque, why[1]))
                svc.touched.add(conn)
            elif p.tx_key is not None:
                svc.transactional_put(conn, slot, p)
            else:
                partition = p.partition if p.partition >= 0 else svc.any_partition(p.topic)
                self._gather(p.topic, partition, _Run(conn, slot, [p.opaque]), [p.body], p.flag)

    def _gather(self, topic: str, partition: int, run: _Run, bodies: list, flag: int | None) -> None:
        key = (topic, partition)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group()
        start = len(g.bodies)
        g.segments.append((run, 0, start, len(bodies)))
        g.bodies += bodies
        if flag:
            if g.flags is None:
                g.flags = [0] * start
            g.flags.append(flag)
        elif g.flags is not None:
            g.flags += [0] * len(bodies)

    # -- sending --------------------------------------------------------------------------

    def flush(self) -> None:
        """Send this turn's puts: one Produce request per partition (more when
        they exceed a batch or a request)."""
        groups, self.groups = self.groups, {}
        now = self.svc.clock()
        ts = time.time_ns() // 1_000_000
        for (topic, partition), g in groups.items():
            n = len(g.bodies)
            sizes = records.put_sizes(g.bodies)
            chunks, frames, req_bytes = [], [], 0
            cum = np.cumsum(sizes + _RECORD_EXTRA)
            start = 0
            while start < n:
                before = int(cum[start - 1]) if start else 0
                end = max(int(np.searchsorted(cum, before + self.batch_limit, side="right")), start + 1)
                end = min(end, start + self.svc.msgids.span)  # a batch's msgIds are one block
                first_id = self.svc.msgids.block(end - start)
                batch = records.build_batch(g.bodies[start:end], None if g.flags is None else g.flags[start:end],
                                            first_id, ts)
                if frames and req_bytes + len(batch) > self.request_limit:
                    self._send(topic, partition, chunks, frames, now)
                    chunks, frames, req_bytes = [], [], 0
                frames.append(batch)
                req_bytes += len(batch)
                chunks.append(_Chunk(_cut(g.segments, start, end), first_id, sizes[start:end],
                                     int.from_bytes(batch[20:24], "little")))
                start = end
            self._send(topic, partition, chunks, frames, now)

    def _send(self, topic: str, partition: int, chunks: list, frames: list, sent_at: float) -> None:
        c = self.svc.counters
        c["put_requests"] += 1
        c["put_batches"] += len(chunks)

        def done(rep, payloads):
            self._produced(topic, partition, chunks, rep, sent_at)

        self.svc.link.request(lambda i: m.Produce(id=i, topic=topic, partition=partition, acks=self.acks,
                                                  timeout_ms=self.timeout_ms),
                              done, self.timeout_ms / 1000 + 5, partition=partition, frames=frames)

    # -- answering -------------------------------------------------------------------------

    def _produced(self, topic: str, partition: int, chunks: list, rep, sent_at: float) -> None:
        svc = self.svc
        if rep.code or len(rep.base_offsets) != len(chunks):
            status = status_of(rep.code) if rep.code else R.INTERNAL
            msg = rep.message or f"the broker answered {len(rep.base_offsets)} offsets for {len(chunks)} batches"
            for c in chunks:
                self._fail(c, status, msg, topic)
            return
        svc.counters["put_acked"] += sum(c.count for c in chunks)
        svc.counters["put_ack_us_sum"] += int((svc.clock() - sent_at) * 1e6) * len(chunks)
        for c, base in zip(chunks, rep.base_offsets):
            self._answer(topic, partition, c, base)

    def _fail(self, c: _Chunk, status: int, msg: str, topic: str) -> None:
        svc = self.svc
        svc.counters["put_failed"] += c.count
        svc.realtime.add("put_failed", topic, c.count, c.count)
        for run, a, b in c.segments:
            run.answer(a, b"".join(R.error(status, o, msg) for o in run.opaques[a:b]), b - a, svc.touched)

    def _answer(self, topic: str, partition: int, c: _Chunk, base: int) -> None:
        svc = self.svc
        view = svc.view(topic, partition)

        def attempt() -> bool:
            try:
                pos = view.record_position(base, base + c.count, svc.scan_budget)
            except LookupError as e:
                log.error("%s/%d: no MetaQ offset for the acknowledged batch at %d: %s", topic, partition, base, e)
                self._fail(c, R.INTERNAL, f"written at record offset {base}, but its MetaQ offset is unknown: {e}",
                           topic)
                return True
            if pos is PENDING:
                return False
            sizes = c.sizes
            view.note_batch(base, c.count, int(sizes.sum()), c.crc)
            offsets = np.empty(c.count, dtype=np.int64)
            offsets[0] = pos
            np.cumsum(sizes[:-1], out=offsets[1:])
            offsets[1:] += pos
            k = 0
            for run, a, b in c.segments:
                n = b - a
                ids = range(c.first_id + k, c.first_id + k + n)
                run.answer(a, R.put_ok(run.opaques[a:b], ids, partition, offsets[k:k + n]), n, svc.touched)
                k += n
            return True

        if not attempt():
            svc.defer(attempt, lambda: self._fail(c, R.INTERNAL, f"written at record offset {base}, but its MetaQ "
                                                               "offset could not be found in time", topic))


def _cut(segments: list, start: int, end: int) -> list:
    """The parts of ``segments`` (run, first, at, count) that fall in puts
    [start, end) of the group: (run, first index in the run, end index)."""
    out = []
    for run, first, at, count in segments:
        lo, hi = max(at, start), min(at + count, end)
        if lo < hi:
            out.append((run, first + lo - at, first + hi - at))
    return out
