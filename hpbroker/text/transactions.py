"""MetaQ's ``transaction`` verbs on hpbroker's transactions (docs/protocol-text.md, "Transactions").

The listener is a client of its broker's acceptors (:mod:`.link`): each
MetaQ step becomes one of the requests a ZeroMQ producer sends
(docs/protocol.md, "Transactions"), to the acceptor coordinating the
transaction:

=====================  ==========================================  =====================
MetaQ                  hpbroker request                            answer (200)
=====================  ==========================================  =====================
BEGIN                  TxBegin (``xa`` for an XID key; timeout:    empty
                       MetaQ's seconds, 0 = the broker's cap)
put ... txKey ...      TxProduce: this turn's puts of the          ``msgId partition -1``
                       transaction, one request (batches per
                       partition); journalled, invisible
END                    none (MetaQ sends it one way)               no answer
PREPARE                TxEnd prepare                               ``0`` (XA_OK), or ``3``
                                                                   (XA_RDONLY: nothing
                                                                   joined it; then rolled
                                                                   back, as MetaQ finishes it)
COMMIT_ONE_PHASE       TxEnd commit, one_phase                     empty
COMMIT_TWO_PHASE       TxEnd commit                                empty
ROLLBACK               TxEnd rollback                              empty
RECOVER                TxList prepared, to every acceptor          the XA keys, joined by
                                                                   CRLF (filtered by the
                                                                   unique qualifier)
FORGET                 none (hpbroker keeps no heuristic list)     empty
=====================  ==========================================  =====================

Local transactions belong to the connection that began them (MetaQ keeps
them in the connection's session context): another connection's puts and
commands with that key are answered "has not been started", and when the
connection closes the listener rolls back those still open (MetaQ's
LocalTransactionRollbackListener).  XA branches belong to no connection:
any connection may drive or resolve them, and prepared ones stay prepared.

Where each request goes: :mod:`.tx_routes`.
"""

from __future__ import annotations

import logging
import time

from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.text import records
from hpbroker.text import replies as R
from hpbroker.text import txkeys as K
from hpbroker.text.connection import Connection, Slot
from hpbroker.text.puts import status_of
from hpbroker.text.tx_routes import Routes, TxRef

log = logging.getLogger("hpbroker.text")

#: a connection with this many local transactions forgets those past their timeout (the broker has rolled them back)
PRUNE_AT = 256


class _Pending:
    """This turn's puts of one transaction, per partition."""

    __slots__ = ("tx", "groups")

    def __init__(self, tx: TxRef):
        self.tx = tx
        self.groups: dict[tuple[str, int], tuple[list, list, list]] = {}  # tp -> (bodies, flags, (conn, slot, opaque))


class TextTransactions:
    def __init__(self, svc):
        self.svc = svc
        self.link = svc.link
        tc = svc.cfg.transactions
        self.timeout_cap_ms = tc.max_timeout_ms
        self.request_timeout_s = tc.decision_timeout_ms / 1000.0 + 10.0
        self.batch_limit = svc.cfg.broker.max_batch_bytes - 1024
        self.request_limit = svc.cfg.broker.max_request_bytes - (64 << 10)
        self.routes = Routes(self.link, svc.partitions, self.request_timeout_s)
        self.local: dict[Connection, dict[str, TxRef]] = {}
        self.pending: dict[str, _Pending] = {}

    # -- the verbs ----------------------------------------------------------------------

    def transaction(self, conn: Connection, cmd) -> None:
        kind = cmd.type
        if kind == "END":  # one way, and ignored by MetaQ's broker
            return
        slot = conn.add(Slot(1))
        try:
            key = K.parse(cmd.tx_key)
        except K.BadKey as e:
            self.svc.counters["bad_commands"] += 1
            return self._fill(conn, slot, R.error(R.BAD_REQUEST, cmd.opaque, str(e)))
        if kind == "RECOVER":
            return self._recover(conn, slot, cmd)
        if kind == "FORGET":  # heuristic outcomes are not kept (hpbroker tx decides and forgets at once)
            if key.kind != K.XA:
                return self._xa_fail(conn, slot, cmd.opaque, K.XAER_NOTA, f"{key.txid} is not a valid xid")
            return self._fill(conn, slot, R.result(R.OK, cmd.opaque))
        if key.kind == K.NULL:
            if kind == "BEGIN":
                return self._fill(conn, slot, R.error(R.INTERNAL, cmd.opaque,
                                                      "Illegal transaction key:null (only RECOVER takes null)"))
            return self._not_started(conn, slot, cmd.opaque, key)
        if kind == "BEGIN":
            return self._begin(conn, slot, cmd, key)
        tx = self._find(conn, key)
        if tx is None:
            return self._not_started(conn, slot, cmd.opaque, key)
        if kind == "PREPARE" and not tx.xa:
            return self._xa_fail(conn, slot, cmd.opaque, K.XAER_RMERR, "Prepare not implemented on Local Transactions.")
        self._flush_one(key.txid)  # this transaction's puts read before the command go first
        c = self.svc.counters
        if kind == "PREPARE":
            return self._prepare(conn, slot, cmd, tx)
        if kind == "ROLLBACK":
            c["tx_rollback"] += 1
            action, one_phase = "rollback", False
        else:
            c["tx_commit"] += 1
            action, one_phase = "commit", kind == "COMMIT_ONE_PHASE"
        self._end(conn, slot, cmd, tx, action, one_phase)

    def put(self, conn: Connection, slot: Slot, put) -> None:
        """A put with a transaction key (checked already: topic, CRC, attribute)."""
        try:
            key = K.parse(put.tx_key)
        except K.BadKey as e:
            return self._put_failed(conn, slot, put, R.BAD_REQUEST, str(e))
        if key.kind == K.NULL:
            return self._put_failed(conn, slot, put, R.INTERNAL, "Local transaction 'null' has not been started.")
        if put.partition < 0:
            return self._put_failed(conn, slot, put, R.INTERNAL,
                                    f"Invalid partition for transaction command:{put.partition}")
        tx = self._find(conn, key)
        if tx is None:
            return self._put_failed(conn, slot, put, R.INTERNAL, _not_started_text(key))
        p = self.pending.get(key.txid)
        if p is None:
            p = self.pending[key.txid] = _Pending(tx)
        bodies, flags, who = p.groups.setdefault((put.topic, put.partition), ([], [], []))
        bodies.append(put.body)
        flags.append(put.flag)
        who.append((conn, slot, put.opaque))

    def flush(self) -> None:
        """Send this turn's transactional puts: one TxProduce per transaction."""
        for txid in list(self.pending):
            self._flush_one(txid)

    def closed(self, conn: Connection) -> None:
        """``conn`` is gone: roll back its open local transactions."""
        txs = self.local.pop(conn, None)
        if not txs:
            return
        for tx in txs.values():
            self.pending.pop(tx.txid, None)
            if tx.finishing:
                continue
            log.info("transaction %s: rolled back, its text client disconnected", tx.txid)

            def done(rep, payloads, tx=tx):
                if rep.code and rep.code != ErrorCode.UNKNOWN_TRANSACTION:
                    log.warning("transaction %s: rollback after disconnect failed (%s); its timeout rolls it back",
                                tx.txid, rep.message)

            self.routes.send(tx, lambda i, t=tx.txid: m.TxEnd(id=i, txid=t, action="rollback"), done)

    def _find(self, conn: Connection, key) -> TxRef | None:
        if key.kind == K.LOCAL:
            return self.local.get(conn, {}).get(key.txid)
        return self.routes.xa(key.txid)

    # -- BEGIN ----------------------------------------------------------------------------

    def _begin(self, conn: Connection, slot: Slot, cmd, key) -> None:
        c = self.svc.counters
        c["tx_begin"] += 1
        xa = key.kind == K.XA
        timeout_ms = min(cmd.timeout * 1000 if cmd.timeout > 0 else self.timeout_cap_ms, self.timeout_cap_ms, 1 << 31)
        if xa:
            c["tx_xa_begin"] += 1
            tx = self.routes.waiting.get(key.txid) or TxRef(key.txid, True)
        else:
            mine = self.local.setdefault(conn, {})
            if key.txid in mine:  # begun already on this connection: MetaQ returns at once
                return self._fill(conn, slot, R.result(R.OK, cmd.opaque))
            now = self.svc.clock()
            if len(mine) >= PRUNE_AT:
                self._prune(mine, now)
            tx = mine[key.txid] = TxRef(key.txid, False, now + timeout_ms / 1000.0 + 1.0)

        def make(i):
            return m.TxBegin(id=i, txid=key.txid, xa=xa, timeout_ms=timeout_ms)

        def answered(rep, target: int | None, hops: int) -> None:
            code = rep.code
            if code == ErrorCode.NOT_COORDINATOR and getattr(rep, "coordinator", -1) >= 0 and hops < 2:
                to = rep.coordinator
                self.link.request(make, lambda r, p: answered(r, to, hops + 1), self.request_timeout_s, partition=to)
                return
            exists = code == ErrorCode.INVALID_TXN_STATE
            if tx.coordinator is None and target is not None:
                self.routes.waiting.pop(key.txid, None)
                if not code or exists:
                    self.routes.resolved(tx, target)
                    if not self.routes.journal_partitions():  # the journal exists now: learn N for later keys
                        self.routes.ask_metadata()
                else:
                    self.routes.unresolved(tx, code, rep.message)
            if not code or (exists and xa):  # MetaQ: a second BEGIN of a branch is a no-op
                return self._fill(conn, slot, R.result(R.OK, cmd.opaque))
            if not xa:
                mine = self.local.get(conn, {})
                if mine.get(key.txid) is tx:
                    del mine[key.txid]
                if exists:
                    return self._fill(conn, slot, R.error(R.INTERNAL, cmd.opaque,
                                                          f"Local transaction '{key.txid}' is begun already on "
                                                          "another connection (hpbroker's txids are broker-wide)"))
            self._xa_fail(conn, slot, cmd.opaque, K.xa_code(code, rep.message, "begin"), rep.message)

        if tx.coordinator is not None or tx.resolving:  # known, or found by what is in flight: in order
            self.routes.send(tx, make, lambda rep, p: answered(rep, None, 0))
            return
        n = self.routes.journal_partitions()
        target = K.coordinator(key.txid, n, len(self.link.socks)) if n else 0
        tx.resolving = tx.by_begin = True
        if xa:
            self.routes.waiting[key.txid] = tx
        self.link.request(make, lambda rep, p: answered(rep, target, 0), self.request_timeout_s, partition=target)

    def _prune(self, mine: dict, now: float) -> None:
        """Forget local transactions past their timeout that nothing waits for."""
        for txid, tx in list(mine.items()):
            if now > tx.deadline and not tx.finishing and not tx.queue and txid not in self.pending:
                del mine[txid]

    # -- PREPARE, COMMIT, ROLLBACK -----------------------------------------------------------

    def _prepare(self, conn: Connection, slot: Slot, cmd, tx: TxRef) -> None:
        def done(rep, payloads):
            if rep.code:
                return self._xa_fail(conn, slot, cmd.opaque, K.xa_code(rep.code, rep.message, "prepare"), rep.message)
            if rep.messages:
                return self._fill(conn, slot, R.result(R.OK, cmd.opaque, b"%d" % K.XA_OK))

            # nothing joined it: read-only (MetaQ finishes such a branch at prepare)
            def rolled_back(rep2, payloads2):
                if rep2.code:
                    log.warning("transaction %s: prepared empty, its rollback failed (%s): RECOVER lists it",
                                tx.txid, rep2.message)
                self._fill(conn, slot, R.result(R.OK, cmd.opaque, b"%d" % K.XA_RDONLY))

            self.routes.send(tx, lambda i: m.TxEnd(id=i, txid=tx.txid, action="rollback"), rolled_back)

        self.routes.send(tx, lambda i: m.TxEnd(id=i, txid=tx.txid, action="prepare"), done)

    def _end(self, conn: Connection, slot: Slot, cmd, tx: TxRef, action: str, one_phase: bool) -> None:
        tx.finishing = True

        def done(rep, payloads):
            tx.finishing = False
            code = rep.code
            gone = code in (0, ErrorCode.UNKNOWN_TRANSACTION, ErrorCode.TRANSACTION_TIMED_OUT,
                            ErrorCode.TRANSACTION_TOO_LARGE)
            if not tx.xa and gone:
                mine = self.local.get(conn)
                if mine is not None and mine.get(tx.txid) is tx:
                    del mine[tx.txid]
            if not code:
                return self._fill(conn, slot, R.result(R.OK, cmd.opaque))
            if code == ErrorCode.UNKNOWN_TRANSACTION:
                return self._xa_fail(conn, slot, cmd.opaque, K.XAER_NOTA, _not_started_text(_key_of(tx)))
            self._xa_fail(conn, slot, cmd.opaque, K.xa_code(code, rep.message, action), rep.message)

        self.routes.send(tx, lambda i: m.TxEnd(id=i, txid=tx.txid, action=action, one_phase=one_phase), done)

    # -- RECOVER ------------------------------------------------------------------------

    def _recover(self, conn: Connection, slot: Slot, cmd) -> None:
        n = len(self.link.socks)
        replies: list = [None] * n
        want = cmd.unique_qualifier

        def done(i, rep):
            replies[i] = rep
            if any(r is None for r in replies):
                return
            bad = [r for r in replies if r.code]
            if bad:
                return self._xa_fail(conn, slot, cmd.opaque, K.xa_code(bad[0].code, bad[0].message, "recover"),
                                     bad[0].message)
            keys = [t.txid for r in replies for t in r.transactions
                    if t.xa and t.txid.startswith("XID:") and (want is None or K.qualifier_of(t.txid) == want)]
            self._fill(conn, slot, R.result(R.OK, cmd.opaque, "\r\n".join(keys).encode()))

        for i in range(n):
            self.link.request(lambda rid: m.TxList(id=rid, states=["prepared"]),
                              lambda rep, p, i=i: done(i, rep), self.request_timeout_s, partition=i)

    # -- puts ---------------------------------------------------------------------------

    def _flush_one(self, txid: str) -> None:
        p = self.pending.pop(txid, None)
        if p is None:
            return
        svc = self.svc
        now_ms = time.time_ns() // 1_000_000
        parts: list = []
        frames: list = []
        puts: list = []  # per put, in frame order: (conn, slot, opaque, msgId, partition)
        size = 0
        for (topic, partition), (bodies, flags, who) in p.groups.items():
            sizes = records.put_sizes(bodies)
            start, n = 0, len(bodies)
            while start < n:
                end, acc = start, 0
                while end < n and end - start < svc.msgids.span and (end == start or acc + sizes[end] + 16
                                                                     <= self.batch_limit):
                    acc += int(sizes[end]) + 16
                    end += 1
                any_flag = any(flags[start:end])
                first_id = svc.msgids.block(end - start)
                batch = records.build_batch(bodies[start:end], flags[start:end] if any_flag else None, first_id,
                                            now_ms)
                if frames and size + len(batch) > self.request_limit:
                    self._send_puts(p, parts, frames, puts)
                    parts, frames, puts, size = [], [], [], 0
                if parts and parts[-1].topic == topic and parts[-1].partition == partition:
                    parts[-1] = m.TxPart(topic, partition, parts[-1].batches + 1)
                else:
                    parts.append(m.TxPart(topic, partition, 1))
                frames.append(batch)
                size += len(batch)
                for k in range(start, end):
                    c, s, o = who[k]
                    puts.append((c, s, o, first_id + k - start, partition))
                start = end
        if frames:
            self._send_puts(p, parts, frames, puts)

    def _send_puts(self, p: _Pending, parts: list, frames: list, puts: list) -> None:
        tx = p.tx
        svc = self.svc

        def done(rep, payloads):
            if rep.code:
                status = R.INTERNAL if rep.code == ErrorCode.UNKNOWN_TRANSACTION else status_of(rep.code)
                text = _not_started_text(_key_of(tx)) if rep.code == ErrorCode.UNKNOWN_TRANSACTION else rep.message
                svc.counters["put_failed"] += len(puts)
                for conn, slot, opaque, _, _ in puts:
                    self._fill(conn, slot, R.error(status, opaque, text))
                return
            svc.counters["put_acked"] += len(puts)
            for conn, slot, opaque, msg_id, partition in puts:
                self._fill(conn, slot, R.result(R.OK, opaque, b"%d %d -1" % (msg_id, partition)))

        self.routes.send(tx, lambda i: m.TxProduce(id=i, txid=tx.txid, parts=list(parts)), done, frames)

    # -- answers ------------------------------------------------------------------------

    def _fill(self, conn: Connection, slot: Slot, data: bytes) -> None:
        slot.fill(0, data)
        self.svc.touched.add(conn)

    def _xa_fail(self, conn, slot, opaque, code: int, message: str) -> None:
        self._fill(conn, slot, R.error(R.INTERNAL, opaque, K.xa_error(code, message)))

    def _not_started(self, conn, slot, opaque, key) -> None:
        if key.kind == K.XA:
            return self._xa_fail(conn, slot, opaque, K.XAER_NOTA, _not_started_text(key))
        self._fill(conn, slot, R.error(R.INTERNAL, opaque, _not_started_text(key)))

    def _put_failed(self, conn, slot, put, status: int, message: str) -> None:
        self.svc.counters["put_failed"] += 1
        self.svc.realtime.add("put_failed", put.topic, 1, 1)
        self._fill(conn, slot, R.error(status, put.opaque, message))


def _key_of(tx: TxRef):
    return K.TxKey(K.XA if tx.xa else K.LOCAL, tx.txid)


def _not_started_text(key) -> str:
    """MetaQ's words (TransactionalCommandProcessor.getTransaction)."""
    if key.kind == K.XA:
        return f"XA transaction '{key.txid}' has not been started."
    return f"Local transaction '{key.txid}' has not been started."
