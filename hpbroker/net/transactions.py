"""The acceptor's side of transactions: routing, the journal, commit's appends.

Which acceptor coordinates a transaction: the one serving partition
``crc32(txid) % N`` of ``__transactions`` (:mod:`hpbroker.tx.journal`), as
for consumer groups.  Every step that must survive a crash is a journal
record produced through :meth:`Acceptor._hand_off` with a sink in place of
the client's identity; the acceptor's ack logic calls the sink's ``done``
with the produce reply, and the client is answered from there:

==========  ====================================  ===========================
request     journal write                         answered when
==========  ====================================  ===========================
TxBegin     none (an open transaction that a      at once
            crash loses is rolled back anyway)
TxProduce   DATA records, acks=1                  they are durable
prepare     DATA + PREPARE, acks=all              durable (and on the slave)
commit      DATA + COMMIT, acks=all; then each    the appends are durable
            partition's batches are appended
            (acks=all), then APPLIED (acks=1)
rollback    ROLLBACK, acks=all (none if nothing   durable
            was journalled)
==========  ====================================  ===========================

**The journal's size.**  ``__transactions`` expires by age
(``log.retention_ms``; internal topics are otherwise never expired).  Every
few seconds the coordinator copies each transaction that has waited in the
journal for more than half that age (prepared, or committed with appends
still failing) to the journal's end (COPY, its batches, COPIED), and writes
each journal partition's ``tx.checkpoint``: the lowest offset any live
transaction has records at, where recovery starts reading.

Recovery (:mod:`hpbroker.net.tx_recovery`) reads the journal back when
this broker starts, or is promoted: open transactions are rolled back,
prepared ones wait, committed ones without APPLIED are appended again -
only the batches their partitions do not hold yet, found after the
commit's ``scan_from`` offsets by the transaction's mark, index and CRC32C
(MetaQ's replay check, made exact), so each lands exactly once.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from hpbroker import config as config_mod
from hpbroker.ipc import handoff
from hpbroker.net.cluster import Cluster
from hpbroker.net.fetch import FetchService
from hpbroker.net import tx_upkeep
from hpbroker.net.tx_apply import JournalSink, TxApply
from hpbroker.net.tx_upkeep import TxUpkeep
from hpbroker.protocol import check_produce
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.tx import journal
from hpbroker.tx.table import (COMMITTED, COMMITTING, OPEN, PREPARED, PREPARING, ROLLED_BACK, ROLLING_BACK, TIMED_OUT,
                               Finished, Tx, TxTable)

log = logging.getLogger("hpbroker.transactions")


class TxService(TxApply, TxUpkeep):
    """A coordinator's transactions: requests here, commit's appends in
    :class:`~hpbroker.net.tx_apply.TxApply`, timeouts, disconnects and the
    journal's read-back and upkeep in :class:`~hpbroker.net.tx_upkeep.TxUpkeep`."""

    def __init__(self, index: int, cfg: config_mod.Config, cluster: Cluster, fetch: FetchService,
                 produce: Callable, clock, wall=time.time):
        """``produce(sink, req, batches)``: hand a produce request to the
        writers as the acceptor does a client's (raises BrokerError)."""
        self.index = index
        self.cfg = cfg
        self.tcfg = cfg.transactions
        self.cluster = cluster
        self.fetch = fetch
        self.produce = produce
        self.clock = clock
        self.wall = wall
        t = self.tcfg
        self.table = TxTable(max_timeout_ms=t.max_timeout_ms, max_transaction_bytes=t.max_transaction_bytes,
                             max_open_bytes=t.max_open_bytes, max_open_transactions=t.max_open_transactions,
                             remember=t.remember_finished)
        self.loaded: set[int] = set()  # journal partitions read back since this broker last led
        self.retry_apply: dict[str, float] = {}  # committed txid -> when to try its appends again
        self.apply_failures = 0
        self.copies = 0
        self.checkpoints: dict[int, int] = {}  # journal partition -> the offset its tx.checkpoint holds
        self._housekeeping_at = 0.0
        self._next_tick = 0.0
        # one request's worth: what fits a ring record with room to spare
        self._chunk = max(cfg.broker.max_request_bytes - (64 << 10), cfg.broker.max_request_bytes // 2)

    # -- routing ------------------------------------------------------------------------

    def coordinator_of(self, txid: str) -> tuple[int, int]:
        """(journal partition, acceptor index) of ``txid``; creates the journal."""
        n = self.cluster.view.topics.get(journal.TOPIC)
        if n is None:
            if self.cluster.view.role == "slave":
                raise BrokerError(ErrorCode.NOT_LEADER, "this broker is a slave: transactions go to the master")
            n = self.cluster.ensure_topic(journal.TOPIC, self.tcfg.log_partitions, explicit=True, if_not_exists=True)
        p = journal.partition_for(txid, n)
        return p, p % len(self.cluster.view.acceptors)

    def _mine(self, txid: str) -> int:
        if self.cluster.view.role == "slave":
            raise BrokerError(ErrorCode.NOT_LEADER, "this broker is a slave: transactions go to the master")
        p, acceptor = self.coordinator_of(txid)
        if acceptor != self.index:
            raise BrokerError(ErrorCode.NOT_COORDINATOR,
                              f"transaction {txid} is coordinated by acceptor {acceptor} "
                              f"({self.cluster.view.acceptors[acceptor]}), not {self.index}")
        self._load(p)
        return p

    def _find(self, txid: str) -> tuple[int, Tx]:
        p = self._mine(txid)
        try:
            return p, self.table.find(txid)
        except Finished as e:
            if e.outcome == TIMED_OUT:
                raise BrokerError(ErrorCode.TRANSACTION_TIMED_OUT,
                                  f"transaction {txid} was rolled back by its timeout") from None
            raise

    # -- requests ------------------------------------------------------------------------

    def begin(self, req: m.TxBegin, conn) -> m.TxBeginReply:
        try:
            self._mine(req.txid)
        except BrokerError as e:
            if e.code != ErrorCode.NOT_COORDINATOR:
                raise
            _, acceptor = self.coordinator_of(req.txid)
            return m.TxBeginReply(id=req.id, code=int(e.code), message=e.message, coordinator=acceptor,
                                  endpoint=self.cluster.view.acceptors[acceptor])
        _, timeout_ms = self.table.begin(req.txid, req.xa, req.timeout_ms, self.clock(), conn)
        return m.TxBeginReply(id=req.id, coordinator=self.index, endpoint=self.cluster.view.acceptors[self.index],
                              timeout_ms=timeout_ms)

    def produce_in(self, ident: bytes, req: m.TxProduce, payload) -> None:
        """Journal the batches of a TxProduce; answered when durable."""
        p, tx = self._find(req.txid)
        values = self._take_parts(tx, req, payload)
        self._write(p, tx, values, 1, lambda reply: self._after_data(ident, req, tx, reply))

    def end(self, ident: bytes, req: m.TxEnd, payload=()) -> m.TxReply | None:
        try:
            p, tx = self._find(req.txid)
        except Finished as e:  # a retry of a finished transaction: tell its outcome
            done = {"commit": COMMITTED, "rollback": ROLLED_BACK}.get(req.action)
            if done == e.outcome:
                return m.TxReply(id=req.id, state=e.outcome)
            raise
        if req.action == "rollback":
            if req.parts:
                raise BrokerError(ErrorCode.BAD_REQUEST, "a rollback carries no messages")
            return self._rollback(p, tx, ident, req, "rolled back by the client", req.heuristic)
        if req.action == "prepare":
            if not tx.xa:
                raise BrokerError(ErrorCode.INVALID_TXN_STATE,
                                  f"transaction {tx.txid} is local: only XA branches are prepared (commit it instead)")
            self._expect(tx, OPEN, "prepare")
            values = self._take_parts(tx, req, payload)
            tx.state, tx.waiter = PREPARING, (ident, req)
            try:
                self._decide(p, tx, values, journal.prepare(), lambda reply: self._after_prepare(tx, reply))
            except BrokerError:  # refused at once (busy, no replicas in sync): still open
                tx.state, tx.waiter = OPEN, None
                raise
            return None
        # commit
        if tx.state == PREPARED:
            if req.parts:
                raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"transaction {tx.txid} is prepared: no more messages")
        elif tx.xa and not (req.one_phase or req.heuristic):
            raise BrokerError(ErrorCode.INVALID_TXN_STATE,
                              f"XA branch {tx.txid} is {tx.state}: prepare it first, or commit with one_phase")
        else:
            self._expect(tx, OPEN, "commit")
        values = self._take_parts(tx, req, payload) if req.parts else []
        before = tx.state
        tx.state, tx.waiter, tx.heuristic = COMMITTING, (ident, req), req.heuristic
        if not tx.parts:  # nothing to append: a decision with no effect, journalled only if it was begun there
            if not tx.journaled:
                self.table.finish(tx, COMMITTED)
                return m.TxReply(id=req.id, state=COMMITTED)
        tx.scan_from = {tp: self.fetch.hwm.get(handoff.tp_key(*tp), 0) for tp in tx.parts}
        record = journal.commit(req.heuristic, [(t, q, s) for (t, q), s in tx.scan_from.items()])
        try:
            self._decide(p, tx, values, record, lambda reply: self._after_commit(tx, before, reply))
        except BrokerError:  # refused at once (busy, no replicas in sync): as it was, to decide again
            tx.state, tx.waiter = before, None
            raise
        return None

    def list(self, req: m.TxList) -> m.TxListReply:
        if self.cluster.view.role == "slave":  # its table is empty: say so rather than list nothing
            raise BrokerError(ErrorCode.NOT_LEADER, "this broker is a slave: its master coordinates transactions "
                                                    "(a promoted slave lists them once promoted)")
        self._load_all()
        now = self.clock()
        want = None if req.states is None else set(req.states)
        out = []
        for tx in self.table.txs.values():
            state = PREPARED if tx.state == PREPARING else tx.state
            if want is not None and state not in want and tx.state not in want:
                continue
            out.append(m.TxInfo(txid=tx.txid, xa=tx.xa, state=tx.state, age_ms=int((now - tx.began) * 1000),
                                bytes=tx.bytes, messages=tx.messages, partitions=sorted(tx.parts),
                                coordinator=self.index))
        return m.TxListReply(id=req.id, transactions=out)

    # -- the steps ---------------------------------------------------------------------------

    def _expect(self, tx: Tx, state: str, what: str) -> None:
        if tx.state != state:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"cannot {what} transaction {tx.txid}: it is {tx.state}")

    def _take_parts(self, tx: Tx, req, payload) -> list[bytes]:
        """Check the request's batches, add them to ``tx``, and return their
        DATA records.  A transaction too large is rolled back."""
        if len(payload) != sum(part.batches for part in req.parts):
            raise BrokerError(ErrorCode.BAD_REQUEST, f"parts name {sum(pt.batches for pt in req.parts)} batches, "
                                                     f"the request carries {len(payload)}")
        nbytes = sum(map(len, payload))
        try:
            self.table.check_add(tx, nbytes)
        except BrokerError as e:
            if e.code == ErrorCode.TRANSACTION_TOO_LARGE:
                self._rollback(self._mine(tx.txid), tx, None, None, e.message, False)
            raise
        values, i = [], 0
        limit = self.cfg.broker.max_batch_bytes
        for part in req.parts:
            self.cluster.check_partition(part.topic, part.partition)
            if part.topic.startswith("__"):
                raise BrokerError(ErrorCode.BAD_REQUEST, f"{part.topic} is internal")
            frames = payload[i:i + part.batches]
            i += part.batches
            headers = check_produce(m.Produce(id=req.id, topic=part.topic, partition=part.partition), frames,
                                    max_batch_bytes=limit)
            for f, h in zip(frames, headers):
                if h.producer_id >= 0:
                    raise BrokerError(ErrorCode.BAD_REQUEST, "a transaction's batches carry no producer id "
                                                             "(idempotence is the journal's job)")
            for f, h in zip(frames, headers):
                b = bytes(f)
                self.table.add(tx, part.topic, part.partition, b, h.record_count)
                values.append(journal.data(part.topic, part.partition, b))
        return values

    def _decide(self, p: int, tx: Tx, values: list[bytes], decision: bytes, then: Callable) -> None:
        """Journal ``values`` (the request's new batches) and ``decision``
        with acks=all; ``then`` gets the reply of the write holding the
        decision.  After a write of ``tx`` failed (it may or may not be on
        disk), the decision restates the whole transaction first: COPY, all
        its batches, then the decision, which recovery reads as the copy's
        end.  Several writes of one partition are prefix-closed (the writer
        appends them in order), so the decision is never durable without
        the batches before it."""
        if tx.restate:
            values = [journal.copy()] + [journal.data(t, q, b) for (t, q), bs in tx.parts.items() for b in bs]
        pieces = list(tx_upkeep.chunks(values + [decision], self._chunk))
        for piece in pieces[:-1]:
            self._write(p, tx, piece, -1, lambda reply: None)

        def last(reply):
            if not reply.code:
                tx.restate = False
                if reply.base_offsets:  # the decision is the write's last record
                    tx.mark = journal.mark_of(p, reply.base_offsets[0] + len(pieces[-1]) - 1)
            return then(reply)

        self._write(p, tx, pieces[-1], -1, last)

    def _write(self, p: int, tx: Tx, values: list[bytes], acks: int, then: Callable) -> None:
        """Append ``values`` for ``tx`` to journal partition ``p``."""
        if not values:
            raise AssertionError("nothing to journal")
        now_ms = int(self.wall() * 1000)
        data = journal.encode(tx.txid, values, now_ms)
        req = m.Produce(id=0, topic=journal.TOPIC, partition=p, acks=acks, timeout_ms=self.tcfg.decision_timeout_ms)
        if tx.first_offset < 0:  # its records land at or after the journal's end now
            tx.first_offset = self.fetch.hwm.get(handoff.tp_key(journal.TOPIC, p), 0)
            tx.first_ms = now_ms
        def done(reply):
            if reply.code:  # on disk or not: the next decision restates the transaction
                tx.restate = True
            return then(reply)

        try:
            self.produce(JournalSink(done), req, [memoryview(data)])
        except BrokerError:
            tx.restate = True
            raise
        tx.journaled = True

    def _after_data(self, ident, req, tx: Tx, reply):
        if reply.code:
            return ident, m.TxReply(id=req.id, code=reply.code, message=f"not journalled: {reply.message}",
                                    state=tx.state)
        return ident, m.TxReply(id=req.id, state=tx.state, bytes=tx.bytes, messages=tx.messages)

    def _after_prepare(self, tx: Tx, reply):
        ident, req = tx.waiter
        tx.waiter = None
        if reply.code:  # it may be on disk or not: the client decides again (commit, rollback or prepare)
            tx.state = OPEN
            return ident, m.TxReply(id=req.id, code=reply.code, state=tx.state,
                                    message=f"prepare of {tx.txid} not confirmed ({reply.message}); "
                                            "retry it, or roll back")
        tx.state, tx.deadline = PREPARED, None
        return ident, m.TxReply(id=req.id, state=PREPARED, bytes=tx.bytes, messages=tx.messages)

    def _after_commit(self, tx: Tx, before: str, reply):
        if reply.code:
            ident, req = tx.waiter
            tx.waiter = None
            tx.state = before
            return ident, m.TxReply(id=req.id, code=reply.code, state=tx.state,
                                    message=f"commit of {tx.txid} not confirmed ({reply.message}): its outcome is "
                                            "in doubt until you commit (again) or roll back")
        if tx.heuristic:
            log.warning("transaction %s: heuristic commit by an operator", tx.txid)
        return self.apply(tx)  # the answer now when there is nothing to append (a branch prepared empty)

    def _rollback(self, p: int, tx: Tx, ident, req, reason: str, heuristic: bool, outcome: str = ROLLED_BACK):
        if tx.state not in (OPEN, PREPARED):
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"cannot roll back transaction {tx.txid}: it is {tx.state}")
        if heuristic:
            log.warning("transaction %s: heuristic rollback by an operator", tx.txid)
        if not tx.journaled:
            self.table.finish(tx, outcome)
            return None if req is None else m.TxReply(id=req.id, state=ROLLED_BACK)
        before = tx.state
        tx.state = ROLLING_BACK

        def then(reply):
            if reply.code:
                tx.state = before
                if req is None:
                    log.warning("transaction %s: rollback (%s) not journalled: %s", tx.txid, reason, reply.message)
                    return None
                return ident, m.TxReply(id=req.id, code=reply.code, state=before,
                                        message=f"rollback of {tx.txid} not confirmed: {reply.message}")
            self.table.finish(tx, outcome)
            return None if req is None else (ident, m.TxReply(id=req.id, state=ROLLED_BACK))

        # An open transaction's rollback needs no slave's ack: a slave
        # promoted without it rolls the transaction back too, as open.
        try:
            self._write(p, tx, [journal.rollback(heuristic, reason)], -1 if before == PREPARED else 1, then)
        except BrokerError:  # refused at once: as it was (a timeout's rollback is tried again)
            tx.state = before
            raise
        return None

    def stats(self) -> dict:
        t = self.table
        return {"transactions_open": sum(1 for x in t.txs.values() if x.state == OPEN),
                "transactions_prepared": sum(1 for x in t.txs.values() if x.state == PREPARED),
                "transactions_bytes": t.bytes, "transactions_committed": t.commits,
                "transactions_rolled_back": t.rollbacks, "transactions_timed_out": t.timeouts,
                "transaction_apply_failures": self.apply_failures, "transaction_journal_copies": self.copies}

