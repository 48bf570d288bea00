"""A coordinator's work between requests, and keeping the journal bounded.

:class:`TxUpkeep`, which :class:`~hpbroker.net.transactions.TxService`
inherits, runs from the acceptor's loop: transactions past their timeout
are rolled back, committed ones whose appends failed are tried again, a
disconnected client's local transactions are rolled back, and each journal
partition this acceptor coordinates is read back (:mod:`hpbroker.net.tx_recovery`)
before its first use.


``__transactions`` expires by age (``log.retention_ms``).  A transaction
that waits in the journal for more than half that age (a prepared XA branch
whose coordinator is gone, a commit whose appends keep failing) is copied
to the journal's end - COPY, its batches, COPIED - so its records never
expire (:mod:`hpbroker.tx.journal`).  Each journal partition's
``tx.checkpoint`` holds the lowest offset a live transaction has records
at: recovery starts reading there.  Both run every few seconds from
:meth:`TxUpkeep.tick`.
"""

from __future__ import annotations

import json
import logging
import os

from hpbroker.ipc import handoff
from hpbroker.net import tx_recovery
from hpbroker.protocol.errors import BrokerError
from hpbroker.tx import journal
from hpbroker.tx.table import COMMITTING, PREPARED, TIMED_OUT, Tx

log = logging.getLogger("hpbroker.transactions")

_HOUSEKEEPING_S = 5.0
_TICK_S = 0.1


def copy_old(svc, now_ms: int) -> None:
    """Copy to the journal's end each transaction waiting in it for more
    than half of ``log.retention_ms``, before its records can expire."""
    retention = svc.cfg.log.retention_ms
    if retention < 0:
        return
    for tx in list(svc.table.txs.values()):
        if (tx.state in (PREPARED, COMMITTING) and not tx.copying and not tx.applying and tx.first_ms >= 0
                and now_ms - tx.first_ms > retention // 2):
            copy(svc, tx)


def copy(svc, tx: Tx) -> None:
    """Write ``tx`` again at the journal's end; it lives there from COPIED on."""
    p = journal.partition_for(tx.txid, svc.cluster.view.topics[journal.TOPIC])
    data = [journal.data(t, q, b) for (t, q), bs in tx.parts.items() for b in bs]
    parts = list(chunks(data, svc._chunk)) or [[]]
    parts[0] = [journal.copy()] + parts[0]
    state = PREPARED if tx.state == PREPARED else COMMITTING
    parts[-1] = parts[-1] + [journal.copied(state, tx.heuristic,
                                              [(t, q, s) for (t, q), s in tx.scan_from.items()], tx.mark)]
    tx.copying = True
    start: list[int] = []
    n = len(parts)

    def done(i: int, reply):
        if i == 0 and not reply.code and reply.base_offsets:
            start.append(reply.base_offsets[0])
        if i < n - 1:
            return None
        tx.copying = False
        if reply.code or not start:
            log.warning("transaction %s: copy to the journal's end failed (%s); trying again later",
                        tx.txid, reply.message or "its first part failed")
        else:
            tx.first_offset, tx.first_ms = start[0], int(svc.wall() * 1000)
            svc.copies += 1
        return None

    try:
        for i, values in enumerate(parts):
            svc._write(p, tx, values, -1, lambda reply, i=i: done(i, reply))
    except BrokerError as e:
        tx.copying = False
        log.warning("transaction %s: copy to the journal's end not started: %s", tx.txid, e.message)

def write_checkpoints(svc) -> None:
    """Each loaded journal partition's recovery start: the lowest offset
    a live transaction has records at (its durable end when none)."""
    n = svc.cluster.view.topics.get(journal.TOPIC)
    if not n:
        return
    low = {p: svc.fetch.hwm.get(handoff.tp_key(journal.TOPIC, p), 0) for p in svc.loaded}
    for tx in svc.table.txs.values():
        p = journal.partition_for(tx.txid, n)
        if p in low and tx.first_offset >= 0:
            low[p] = min(low[p], tx.first_offset)
    for p, offset in low.items():
        path = tx_recovery.checkpoint_path(svc.cfg.broker.data_dir, p)
        if svc.checkpoints.get(p) != offset and os.path.isdir(os.path.dirname(path)):
            try:
                _write_unsynced(path, json.dumps({"from": offset}).encode())
                svc.checkpoints[p] = offset
            except OSError as e:  # only recovery's start is at stake: it reads from the log start
                log.warning("journal %s/%d: tx.checkpoint not written: %s", journal.TOPIC, p, e)


def chunks(items: list, limit: int):
    """``items`` (bytes) in runs of at most ``limit`` bytes (at least one each)."""
    run, size = [], 0
    for x in items:
        if run and size + len(x) > limit:
            yield run
            run, size = [], 0
        run.append(x)
        size += len(x)
    if run:
        yield run


def chunks_of(items: list, size, limit: int):
    """``items`` in runs whose ``size(item)`` add up to at most ``limit``
    (at least one each)."""
    run, total = [], 0
    for x in items:
        n = size(x)
        if run and total + n > limit:
            yield run
            run, total = [], 0
        run.append(x)
        total += n
    if run:
        yield run


def _write_unsynced(path: str, data: bytes) -> None:
    """Replace ``path`` by rename, without fsync: this runs on the
    acceptor's loop, and a checkpoint a crash loses or empties reads as 0
    (recovery reads the whole journal, retention keeps all of it), which is
    only slower, never wrong; an older one is lower, so safe too."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner-only, as every data file
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class TxUpkeep:
    """TxService's work between requests: timeouts, appends to retry, a
    client's disconnect, reading the journal back, and the upkeep above
    (it provides ``table``, ``cluster``, ``cfg``, ``index``, ``loaded``,
    ``retry_apply``, ``wall``, ``_mine``, ``_rollback`` and ``apply``)."""

    def tick(self, now: float) -> None:
        """Timeouts, appends to retry, the journal's upkeep; at most every
        ``_TICK_S`` (the acceptor calls this every turn of its loop)."""
        if now < self._next_tick or self.cluster.view is None or journal.TOPIC not in self.cluster.view.topics:
            return
        self._next_tick = now + _TICK_S
        if self.cluster.view.role == "slave":
            if self.loaded:  # demoted: the journal is the new master's now
                self.loaded.clear()
                self.table.txs.clear()
                self.table.bytes = 0
            return
        try:
            self._load_all()
        except BrokerError as e:
            log.warning("transaction journal not read back yet: %s", e.message)
            return
        for tx in self.table.expired(now):
            try:
                self._rollback(self._mine(tx.txid), tx, None, None, "timeout", False, outcome=TIMED_OUT)
            except BrokerError as e:
                tx.deadline = now + 1.0  # busy or stopping: try again in a second
                log.warning("transaction %s: timed out, rollback not journalled yet: %s", tx.txid, e.message)
                continue
            log.info("transaction %s: rolled back by its timeout", tx.txid)
            self.table.timeouts += 1
        for txid, at in list(self.retry_apply.items()):
            tx = self.table.txs.get(txid)
            if tx is None:
                del self.retry_apply[txid]
            elif now >= at and not tx.applying and not tx.copying:
                self.apply(tx)
        if now >= self._housekeeping_at:
            # often enough that a copy made at half the retention age is
            # followed by the next one well before the first expires
            retention = self.cfg.log.retention_ms
            self._housekeeping_at = now + (_HOUSEKEEPING_S if retention < 0 else
                                           min(_HOUSEKEEPING_S, retention / 10_000))
            copy_old(self, int(self.wall() * 1000))
            write_checkpoints(self)

    def disconnected(self, conn) -> None:
        """Client connection ``conn`` is gone: roll back its open local transactions."""
        for tx in self.table.of_connection(conn):
            try:
                self._rollback(self._mine(tx.txid), tx, None, None, "client disconnected", False)
            except BrokerError as e:  # its timeout rolls it back instead
                log.warning("transaction %s: client gone, rollback not journalled: %s", tx.txid, e.message)
                continue
            log.info("transaction %s: rolled back, its client disconnected", tx.txid)

    def _load_all(self) -> None:
        n = self.cluster.view.topics.get(journal.TOPIC)
        if n is None:
            return
        for p in range(n):
            if p % len(self.cluster.view.acceptors) == self.index:
                self._load(p)

    def _load(self, p: int) -> None:
        if p in self.loaded:
            return
        self.loaded.add(p)
        tx_recovery.recover(self, p)
