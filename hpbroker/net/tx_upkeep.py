"""Keeping the transaction journal bounded: copies and recovery checkpoints.

``__transactions`` expires by age (``log.retention_ms``).  A transaction
that waits in the journal for more than half that age (a prepared XA branch
whose coordinator is gone, a commit whose appends keep failing) is copied
to the journal's end - COPY, its batches, COPIED - so its records never
expire (:mod:`hpbroker.tx.journal`).  Each journal partition's
``tx.checkpoint`` holds the lowest offset a live transaction has records
at: recovery starts reading there.  Both run every few seconds from
:meth:`TxService.tick <hpbroker.net.transactions.TxService.tick>`.
"""

from __future__ import annotations

import json
import logging
import os

from hpbroker.ipc import handoff
from hpbroker.net import tx_recovery
from hpbroker.protocol.errors import BrokerError
from hpbroker.tx import journal
from hpbroker.tx.table import COMMITTING, PREPARED, Tx

log = logging.getLogger("hpbroker.transactions")


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
