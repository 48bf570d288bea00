"""What the text listener does with each command: get, offset, version,
quit, transaction and refusals here; puts in :mod:`.puts`, stats in
:mod:`.stats_service`.

Work that needs a scan of the log (the MetaQ offset of a batch after a
restart, a get far from where the index reaches) is deferred
(:meth:`TextService.defer`) and resumed each turn of the loop with a
budget of bytes (:meth:`TextService.resume`), so other connections are
served in between.

Transactions: the parser reads every ``transaction`` line and every put
with a transaction key; :mod:`.transactions` maps them onto hpbroker's
transactions (``self.transactions``).
"""

from __future__ import annotations

import logging
import re
import zlib

import hpbroker
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.text import records
from hpbroker.text import replies as R
from hpbroker.text.connection import Connection, Slot
from hpbroker.text.msgids import MsgIds
from hpbroker.text.offsets import PENDING, Messages, Moved, PartitionView
from hpbroker.text.parser import Get, Offset, Put, PutRun, Quit, Refused, Stats, Transaction, Version
from hpbroker.text.puts import Puts, status_of
from hpbroker.text.stats import Realtime

log = logging.getLogger("hpbroker.text")

_TOPIC = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._-]{1,249}$")
VERSION = f"hpbroker-{hpbroker.__version__}".encode()


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
    def __init__(self, cfg, link, clock, *, broker_id: int = 0, lane: int = 0, lanes: int = 1,
                 scan_budget: int = 32 << 20):
        from hpbroker.io import layout

        self.cfg = cfg
        self.t = cfg.text_protocol
        self.link = link
        self.clock = clock
        self.data_dir = cfg.broker.data_dir
        self._partition_dir = layout.partition_dir
        self.msgids = MsgIds(broker_id, lane=lane, lanes=lanes)
        self.realtime = Realtime(clock)
        self.scan_budget = scan_budget
        self.partitions: dict[str, int] = {}  # topic -> partitions, from metadata
        self._rr = 0
        self._topics_ok: set[str] = set()
        self._views: dict[tuple[str, int], PartitionView] = {}
        self._deferred: list = []  # callables that return True when done
        self.touched: set[Connection] = set()  # connections with new answers to send
        self.transactions = None  # set below: .transaction(conn, cmd), .put(conn, slot, put), .flush(), .closed(conn)
        self.counters = dict.fromkeys(
            ("cmd_put", "cmd_get", "cmd_offset", "get_miss", "put_failed", "put_requests", "put_batches",
             "put_ack_us_sum", "put_acked", "tx_begin", "tx_xa_begin", "tx_commit", "tx_rollback",
             "bad_commands", "get_messages", "get_bytes", "put_runs"), 0)
        self.puts = Puts(self)
        from hpbroker.text.transactions import TextTransactions

        self.transactions = TextTransactions(self)

    stats_handler = None  # set by the listener (stats_service.StatsService.handle)

    # -- the commands of one read -----------------------------------------------------

    def on_commands(self, conn: Connection, events: list) -> None:
        puts = self.puts
        for ev in events:
            cls = ev.__class__
            if cls is PutRun:
                puts.add_run(conn, ev)
            elif cls is Put:
                puts.add_puts(conn, [ev])
            elif cls is Get:
                self._get(conn, ev)
            elif cls is Offset:
                self._offset(conn, ev)
            elif cls is Version:
                if ev.opaque is None:
                    self._answer(conn, b"VERSION %s\r\n" % VERSION)
                else:
                    self._answer(conn, R.result(R.OK, ev.opaque, VERSION))
            elif cls is Stats:
                self.stats_handler(conn, ev)
            elif cls is Quit:  # nothing after it is read or answered
                conn.quitting = True
                conn.parser.closed = True
                self.touched.add(conn)
                break
            elif cls is Transaction:
                self.transaction(conn, ev)
            elif cls is Refused:
                self.counters["bad_commands"] += 1
                self._answer(conn, R.UNKNOWN_COMMAND if ev.unknown else R.error(ev.code, ev.opaque, ev.message))
                if ev.fatal:
                    conn.quitting = True

    def flush(self) -> None:
        """Send this turn's puts to the broker."""
        if self.puts.groups:
            self.puts.flush()
        if self.transactions.pending:
            self.transactions.flush()

    def closed(self, conn: Connection) -> None:
        """``conn`` is closed: its open local transactions are rolled back."""
        if self.transactions.local:
            self.transactions.closed(conn)

    def _answer(self, conn: Connection, data: bytes) -> None:
        conn.add(Slot.done(data))
        self.touched.add(conn)

    # -- transactions (hpbroker/text/transactions.py) ------------------------------------------

    def transaction(self, conn: Connection, cmd: Transaction) -> None:
        """``transaction txKey sessionId type ...``: MetaQ's local and XA
        transactions on hpbroker's.  END is never answered (MetaQ's clients
        send it one way)."""
        self.transactions.transaction(conn, cmd)

    def transactional_put(self, conn: Connection, slot: Slot, put: Put) -> None:
        """A put with a transaction key (answered with offset -1; visible at commit), in ``slot``."""
        self.transactions.put(conn, slot, put)

    # -- what puts need -----------------------------------------------------------------------

    def topic_ok(self, topic: str) -> bool:
        if topic in self._topics_ok:
            return True
        if not _TOPIC.match(topic):
            return False
        self._topics_ok.add(topic)
        return True

    def check_put(self, p: Put):
        """(status, message) when the put cannot be taken, else None."""
        if not self.topic_ok(p.topic):
            return R.BAD_REQUEST, f"bad topic name {p.topic!r}: 1-249 of [A-Za-z0-9._-]"
        if p.partition < -1:
            return R.BAD_REQUEST, f"bad partition {p.partition}"
        if p.checksum != -1 and zlib.crc32(p.body) & 0x7FFFFFFF != p.checksum:
            return R.BAD_REQUEST, (f"checksum mismatch: the body's CRC32 & 0x7FFFFFFF is "
                                   f"{zlib.crc32(p.body) & 0x7FFFFFFF}, the put says {p.checksum}")
        if p.flag & records.ATTRIBUTE_FLAG:
            try:
                records.split_attribute(p.body, p.flag)
            except records.BadMessage as e:
                return R.BAD_REQUEST, str(e)
        return None

    def any_partition(self, topic: str) -> int:
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
        if self.puts.groups:
            self.puts.flush()  # the puts read before this request reach the broker before it

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
                self.defer(attempt, self._give_up(conn, slot, g.opaque, "get"))

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
                self.defer(attempt, self._give_up(conn, slot, o.opaque, "offset"))

        self._latest(conn, slot, o.topic, o.partition, o.opaque, serve)

    # -- deferred work ---------------------------------------------------------------------

    @property
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    #: deferred work not done in this long is given up (a scan that cannot finish: a bug, or a log gone)
    DEFER_LIMIT_S = 60.0

    def defer(self, attempt, give_up) -> None:
        """``attempt()`` again each turn until it returns True; after
        DEFER_LIMIT_S, ``give_up()`` instead (it answers 500)."""
        self._deferred.append((attempt, give_up, self.clock() + self.DEFER_LIMIT_S))

    def resume(self) -> None:
        """Go on with deferred work (scans), each with its budget."""
        work, self._deferred = self._deferred, []
        now = self.clock()
        for item in work:
            attempt, give_up, deadline = item
            if attempt():
                continue
            if now > deadline:
                log.error("gave up deferred work after %.0f s (%s)", self.DEFER_LIMIT_S, getattr(attempt, "__qualname__", attempt))
                give_up()
            else:
                self._deferred.append(item)

    def _give_up(self, conn: Connection, slot: Slot, opaque: bytes, what: str):
        def give_up() -> None:
            slot.fill(0, R.error(R.INTERNAL, opaque, f"{what}: the log could not be read in time"))
            self.touched.add(conn)
        return give_up
