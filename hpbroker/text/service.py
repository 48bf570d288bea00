"""What the text listener does with each command: put, get, offset, version,
quit, transaction, and refusals.  (``stats`` is :mod:`.stats_service`'s.)

Puts are gathered for one turn of the listener's loop, from every
connection read in that turn, and go to the broker as one ``Produce``
request per partition (:meth:`TextService.flush`): per chunk of input, not
per message.  Each answer waits for the broker's ack of its batch, then for
its MetaQ offset (:mod:`.offsets`), which needs no I/O when the listener's
own batches follow one another and a scan of the log otherwise; a scan
runs in steps (:meth:`TextService.resume`) so other connections are served
in between.

Transactions: the parser reads every ``transaction`` line and every put
with a transaction key; :meth:`TextService.transaction` and
:meth:`TextService.transactional_put` answer them, for now with 500 (the
seam where hpbroker's transactions plug in).
"""

from __future__ import annotations

import logging
import re
import time
import zlib

import numpy as np

import hpbroker
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.text import replies as R
from hpbroker.text import records
from hpbroker.text.connection import Connection, Slot
from hpbroker.text.msgids import MsgIds
from hpbroker.text.offsets import PENDING, Messages, Moved, NoData, PartitionView
from hpbroker.text.parser import Get, Offset, Put, Quit, Refused, Stats, Transaction, Version
from hpbroker.text.stats import Realtime

log = logging.getLogger("hpbroker.text")

_TOPIC = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._-]{1,249}$")
VERSION = f"hpbroker-{hpbroker.__version__}".encode()
#: per record, what a batch adds to a put body: table entry, id header (and the batch header, per batch)
_RECORD_OVERHEAD = 16 + records.ID_ONLY_LEN + 64

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


class _Group:
    """Puts for one partition, gathered in one turn of the loop."""

    __slots__ = ("bodies", "opaques", "flags", "targets", "any_flag")

    def __init__(self):
        self.bodies: list = []
        self.opaques: list = []
        self.flags: list = []
        self.targets: list = []  # (connection, slot, index in slot)
        self.any_flag = False


class _Chunk:
    """One batch of a produce request, and whom its answers go to."""

    __slots__ = ("targets", "opaques", "ids", "sizes", "crc", "count")

    def __init__(self, targets, opaques, ids, sizes, crc):
        self.targets, self.opaques, self.ids, self.sizes, self.crc = targets, opaques, ids, sizes, crc
        self.count = len(targets)


class _FileSource:
    def __init__(self, d: str):
        from hpbroker.io import layout
        from hpbroker.io.reader import PartitionReader

        self.dir = d
        self._list = layout.list_segments
        self.reader = PartitionReader(d)

    def segments(self) -> list[int]:
        return self._list(self.dir)

    def read(self, offset: int, max_bytes: int, hwm: int) -> bytes:
        from hpbroker.io.errors import OffsetOutOfRange

        try:
            return self.reader.read(offset, max_bytes, hwm)
        except OffsetOutOfRange:
            return b""


class TextService:
    def __init__(self, cfg, link, clock, *, broker_id: int = 0, scan_budget: int = 32 << 20):
        from hpbroker.io import layout

        self.cfg = cfg
        self.t = cfg.text_protocol
        self.link = link
        self.clock = clock
        self.data_dir = cfg.broker.data_dir
        self._partition_dir = layout.partition_dir
        self.msgids = MsgIds(broker_id)
        self.realtime = Realtime(clock)
        self.acks = -1 if self.t.acks == "all" else 1
        self.batch_limit = cfg.broker.max_batch_bytes - 1024
        self.request_limit = cfg.broker.max_request_bytes - 1024
        self.scan_budget = scan_budget
        self.partitions: dict[str, int] = {}  # topic -> partitions, from metadata
        self._rr = 0
        self._topics_ok: set[str] = set()
        self._groups: dict[tuple[str, int], _Group] = {}
        self._views: dict[tuple[str, int], PartitionView] = {}
        self._deferred: list = []  # callables that return True when done
        self.touched: set[Connection] = set()  # connections with new answers to send
        self.transactions = None  # the seam: an object with .transaction(conn, slot, cmd) and .put(...)
        self.counters = dict.fromkeys(
            ("cmd_put", "cmd_get", "cmd_offset", "get_miss", "put_failed", "put_requests", "put_batches",
             "put_ack_us_sum", "put_acked", "tx_begin", "tx_xa_begin", "tx_commit", "tx_rollback",
             "bad_commands", "get_messages", "get_bytes"), 0)

    # -- the commands of one read -----------------------------------------------------

    def on_commands(self, conn: Connection, events: list) -> None:
        run: list = []
        for ev in events:
            if ev.__class__ is Put:
                run.append(ev)
                continue
            if run:
                self._puts(conn, run)
                run = []
            if ev.__class__ is Get:
                self._get(conn, ev)
            elif ev.__class__ is Offset:
                self._offset(conn, ev)
            elif ev.__class__ is Version:
                if ev.opaque is None:
                    self._answer(conn, b"VERSION %s\r\n" % VERSION)
                else:
                    self._answer(conn, R.result(R.OK, ev.opaque, VERSION))
            elif ev.__class__ is Stats:
                self.stats_handler(conn, ev)
            elif ev.__class__ is Quit:
                conn.quitting = True
            elif ev.__class__ is Transaction:
                self.transaction(conn, ev)
            elif ev.__class__ is Refused:
                self.counters["bad_commands"] += 1
                self._answer(conn, R.UNKNOWN_COMMAND if ev.unknown else R.error(ev.code, ev.opaque, ev.message))
                if ev.fatal:
                    conn.quitting = True
        if run:
            self._puts(conn, run)

    stats_handler = None  # set by the listener (stats_service.StatsService.handle)

    def _answer(self, conn: Connection, data: bytes) -> None:
        conn.add(Slot.done(data))
        self.touched.add(conn)

    # -- transactions: the seam ---------------------------------------------------------------

    def transaction(self, conn: Connection, cmd: Transaction) -> None:
        """``transaction txKey sessionId type ...``: MetaQ's local and XA
        transactions, to be mapped onto hpbroker's; answered 500 until then."""
        if self.transactions is not None:
            return self.transactions.transaction(conn, cmd)
        self._answer(conn, R.error(R.INTERNAL, cmd.opaque, "transactions are not supported on this text port yet"))

    def transactional_put(self, conn: Connection, slot: Slot, i: int, put: Put) -> None:
        """A put with a transaction key (MetaQ answers it with offset -1 and
        keeps it until commit); answered 500 until transactions exist."""
        if self.transactions is not None:
            return self.transactions.put(conn, slot, i, put)
        self.counters["put_failed"] += 1
        slot.fill(i, R.error(R.INTERNAL, put.opaque, "transactions are not supported on this text port yet"))

    # -- put ----------------------------------------------------------------------------------

    def _puts(self, conn: Connection, puts: list) -> None:
        n = len(puts)
        weight = 0
        for p in puts:
            weight += len(p.body)
        slot = conn.add(Slot(n, weight))
        self.counters["cmd_put"] += n
        groups = self._groups
        realtime = self.realtime
        for i, p in enumerate(puts):
            realtime.add("put", p.topic, 1, 1)
            realtime.add("message_size", p.topic, 1, len(p.body))
            why = self._check_put(p)
            if why is not None:
                self.counters["put_failed"] += 1
                realtime.add("put_failed", p.topic, 1, 1)
                slot.fill(i, R.error(why[0], p.opaque, why[1]))
                self.touched.add(conn)
                continue
            if p.tx_key is not None:
                self.transactional_put(conn, slot, i, p)
                self.touched.add(conn)
                continue
            key = (p.topic, p.partition if p.partition >= 0 else self._any_partition(p.topic))
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group()
            g.bodies.append(p.body)
            g.opaques.append(p.opaque)
            g.flags.append(p.flag)
            g.targets.append((conn, slot, i))
            if p.flag:
                g.any_flag = True

    def _check_put(self, p: Put):
        if p.topic not in self._topics_ok:
            if not _TOPIC.match(p.topic):
                return R.BAD_REQUEST, f"bad topic name {p.topic!r}: 1-249 of [A-Za-z0-9._-]"
            self._topics_ok.add(p.topic)
        if p.partition < -1:
            return R.BAD_REQUEST, f"bad partition {p.partition}"
        if p.checksum != -1 and zlib.crc32(p.body) & 0x7FFFFFFF != p.checksum:
            return R.BAD_REQUEST, f"checksum mismatch: the body's CRC32 & 0x7FFFFFFF is {zlib.crc32(p.body) & 0x7FFFFFFF}, " \
                                  f"the put says {p.checksum}"
        if p.flag & records.ATTRIBUTE_FLAG:
            try:
                records.split_attribute(p.body, p.flag)
            except records.BadMessage as e:
                return R.BAD_REQUEST, str(e)
        return None

    def _any_partition(self, topic: str) -> int:
        """MetaQ's partition -1: the broker picks (round robin)."""
        n = self.partitions.get(topic)
        if n is None:
            n = self.refresh_topic(topic)
        self._rr += 1
        return self._rr % max(n, 1)

    def refresh_topic(self, topic: str) -> int:
        """Ask the broker (blocking, rare: a topic's first put with partition -1)."""
        rep, _ = self.link.call(lambda i: m.Metadata(id=i, topics=[topic]), 10.0)
        for t in rep.topics:
            if t.code == 0:
                self.partitions[t.name] = len(t.partitions)
        return self.partitions.get(topic, 1)

    def flush(self) -> None:
        """Send this turn's puts: one Produce request per partition (more when
        they exceed a batch or a request)."""
        groups, self._groups = self._groups, {}
        now = self.clock()
        for (topic, partition), g in groups.items():
            n = len(g.bodies)
            sizes = records.put_sizes(g.bodies)
            flags = g.flags if g.any_flag else None
            ids = self.msgids.take(n)
            ts = time.time_ns() // 1_000_000
            chunks, frames, req_bytes = [], [], 0
            start = 0
            cum = np.cumsum(sizes + (_RECORD_OVERHEAD - records.MESSAGE_HEADER))
            while start < n:
                base = int(cum[start - 1]) if start else 0
                end = int(np.searchsorted(cum, base + self.batch_limit, side="right"))
                end = max(end, start + 1)
                batch = records.build_batch(g.bodies[start:end], None if flags is None else flags[start:end],
                                            ids[start:end], ts)
                if frames and req_bytes + len(batch) > self.request_limit:
                    self._send(topic, partition, chunks, frames, now)
                    chunks, frames, req_bytes = [], [], 0
                frames.append(batch)
                req_bytes += len(batch)
                chunks.append(_Chunk(g.targets[start:end], g.opaques[start:end], ids[start:end], sizes[start:end],
                                     int.from_bytes(batch[20:24], "little")))
                start = end
            self._send(topic, partition, chunks, frames, now)

    def _send(self, topic: str, partition: int, chunks: list, frames: list, sent_at: float) -> None:
        self.counters["put_requests"] += 1
        self.counters["put_batches"] += len(chunks)

        def done(rep, payloads):
            self._on_produced(topic, partition, chunks, rep, sent_at)

        self.link.request(lambda i: m.Produce(id=i, topic=topic, partition=partition, acks=self.acks,
                                              timeout_ms=self.t.put_timeout_ms),
                          done, self.t.put_timeout_ms / 1000 + 5, partition=partition, frames=frames)

    def _on_produced(self, topic: str, partition: int, chunks: list, rep, sent_at: float) -> None:
        if rep.code or len(rep.base_offsets) != len(chunks):
            status = status_of(rep.code) if rep.code else R.INTERNAL
            msg = rep.message or f"the broker answered {len(rep.base_offsets)} offsets for {len(chunks)} batches"
            for c in chunks:
                self._fail(c, status, msg, topic)
            return
        self.counters["put_acked"] += sum(c.count for c in chunks)
        self.counters["put_ack_us_sum"] += int((self.clock() - sent_at) * 1e6) * len(chunks)
        for c, base in zip(chunks, rep.base_offsets):
            self._answer_chunk(topic, partition, c, base)

    def _fail(self, c: _Chunk, status: int, msg: str, topic: str) -> None:
        self.counters["put_failed"] += c.count
        self.realtime.add("put_failed", topic, c.count, c.count)
        for (conn, slot, i), opaque in zip(c.targets, c.opaques):
            slot.fill(i, R.error(status, opaque, msg))
            self.touched.add(conn)

    def _answer_chunk(self, topic: str, partition: int, c: _Chunk, base: int) -> None:
        view = self.view(topic, partition)

        def attempt() -> bool:
            try:
                pos = view.record_position(base, base + c.count, self.scan_budget)
            except LookupError as e:
                log.error("%s/%d: no MetaQ offset for acknowledged batch at %d: %s", topic, partition, base, e)
                self._fail(c, R.INTERNAL, f"written at record offset {base}, but its MetaQ offset is unknown: {e}", topic)
                return True
            if pos is PENDING:
                return False
            total = int(c.sizes.sum())
            view.note_batch(base, c.count, total, c.crc)
            offsets = np.concatenate(([0], np.cumsum(c.sizes[:-1]))) + pos
            answers = R.put_ok(c.opaques, c.ids.tolist(), partition, offsets.tolist())
            touched = self.touched
            for (conn, slot, i), a in zip(c.targets, answers):
                slot.fill(i, a)
                touched.add(conn)
            return True

        if not attempt():
            self._deferred.append(attempt)

    # -- get and offset ------------------------------------------------------------------

    def view(self, topic: str, partition: int) -> PartitionView:
        v = self._views.get((topic, partition))
        if v is None:
            d = self._partition_dir(self.data_dir, topic, partition)
            v = self._views[(topic, partition)] = PartitionView(_FileSource(d), records.topic_key(topic, partition))
        return v

    def _latest(self, conn: Connection, slot: Slot, topic: str, partition: int, opaque: bytes, then) -> None:
        """Ask the broker how far ``topic/partition`` may be read, then ``then(hwm)``."""
        if not _TOPIC.match(topic) or partition < 0:
            return self._missing(conn, slot, topic, partition, opaque)
        if self._groups:
            self.flush()  # the puts read before this request reach the broker before it

        def done(rep, payloads):
            if rep.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
                self._missing(conn, slot, topic, partition, opaque)
            elif rep.code:
                slot.fill(0, R.error(status_of(rep.code), opaque, rep.message))
                self.touched.add(conn)
            else:
                then(rep.offset)

        self.link.request(lambda i: m.ListOffsets(id=i, topic=topic, partition=partition, spec=m.LATEST), done,
                          10.0, partition=partition)

    def _missing(self, conn, slot, topic, partition, opaque) -> None:
        self.counters["get_miss"] += 1
        slot.fill(0, R.error(R.NOT_FOUND, opaque, f"The topic `{topic}` in partition `{partition}` is not exists"))
        self.touched.add(conn)

    def _get(self, conn: Connection, g: Get) -> None:
        slot = conn.add(Slot(1))
        self.counters["cmd_get"] += 1
        self.realtime.add("get", g.topic, 1, 1)
        if g.max_size <= 0:
            slot.fill(0, R.error(R.BAD_REQUEST, g.opaque, f"Bad request,invalid max size:{g.max_size}"))
            self.touched.add(conn)
            return
        max_size = min(g.max_size, self.t.max_get_bytes)

        def serve(hwm: int) -> None:
            view = self.view(g.topic, g.partition)

            def attempt() -> bool:
                r = view.read(g.offset, max_size, hwm, self.scan_budget)
                if r is PENDING:
                    return False
                self._answer_get(conn, slot, g, r)
                return True

            if not attempt():
                self._deferred.append(attempt)

        self._latest(conn, slot, g.topic, g.partition, g.opaque, serve)

    def _answer_get(self, conn: Connection, slot: Slot, g: Get, r) -> None:
        if r.__class__ is Messages:
            self.counters["get_messages"] += r.count
            self.counters["get_bytes"] += r.size
            slot.fill(0, b"".join([R.value_head(r.size, g.opaque), *r.parts]))
        elif r.__class__ is Moved:
            self.counters["get_miss"] += 1
            self.counters["cmd_offset"] += 1
            self.realtime.add("get_miss", g.topic, 1, 1)
            slot.fill(0, R.result(R.MOVED, g.opaque, b"%d" % r.offset))
        else:  # NoData
            self.counters["get_miss"] += 1
            self.realtime.add("get_miss", g.topic, 1, 1)
            if r.beyond and self.t.tell_max_offset:
                self.counters["cmd_offset"] += 1
                slot.fill(0, R.result(R.MOVED, g.opaque, b"%d" % r.max_offset))
            else:
                slot.fill(0, R.error(R.NOT_FOUND, g.opaque, f"Could not find message at position {g.offset}"))
        self.touched.add(conn)

    def _offset(self, conn: Connection, o: Offset) -> None:
        slot = conn.add(Slot(1))
        self.counters["cmd_offset"] += 1
        self.realtime.add("offset", o.topic, 1, 1)

        def serve(hwm: int) -> None:
            view = self.view(o.topic, o.partition)

            def attempt() -> bool:
                r = view.nearest(o.offset, hwm, self.scan_budget)
                if r is PENDING:
                    return False
                slot.fill(0, R.result(R.OK, o.opaque, b"%d" % r))
                self.touched.add(conn)
                return True

            if not attempt():
                self._deferred.append(attempt)

        self._latest(conn, slot, o.topic, o.partition, o.opaque, serve)

    # -- deferred work ---------------------------------------------------------------------

    @property
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def resume(self) -> None:
        """Go on with deferred work (scans), each with its budget."""
        work, self._deferred = self._deferred, []
        for w in work:
            if not w():
                self._deferred.append(w)
