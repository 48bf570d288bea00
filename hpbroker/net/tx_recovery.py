"""Reading the transaction journal back: after a restart, or a promotion.

For journal partition ``p``, every record from the log start to the
durable end rebuilds the transactions it holds; then:

================================  ==========================================
last record of a transaction      what recovery does
================================  ==========================================
DATA (open, never prepared)       rolled back: a ROLLBACK record is written
PREPARE                           kept, prepared, without a timeout: only
                                  the coordinator (tpc_commit/tpc_rollback)
                                  or an operator (hpbroker tx) decides
COMMIT (no APPLIED after it)      its batches are appended again, except
                                  those its partitions already hold: each
                                  partition is read from the commit's
                                  ``scan_from`` offset to its end, and a
                                  batch whose CRC32C and record count are
                                  there is not appended twice
ROLLBACK, APPLIED                 finished: forgotten (outcome remembered)
================================  ==========================================
"""

from __future__ import annotations

import logging
import struct
from collections import Counter

from hpbroker import batch
from hpbroker.ipc import handoff
from hpbroker.tx import journal
from hpbroker.tx.table import COMMITTED, COMMITTING, OPEN, PREPARED, ROLLED_BACK

log = logging.getLogger("hpbroker.transactions")

_CHUNK = 1 << 20
_CRC = struct.Struct("<I")


def recover(svc, p: int) -> None:
    """Rebuild ``svc``'s table from journal partition ``p`` and finish
    what a crash left half done."""
    table, now = svc.table, svc.clock()
    seen = {}
    for e in read(svc.fetch, journal.TOPIC, p):
        tx = table.txs.get(e.txid)
        if e.kind == journal.DATA:
            if tx is None:
                tx = table.recovered(e.txid, False, now)
            if tx.state == OPEN:
                topic, partition, b = e.body
                table.add(tx, topic, partition, b, batch.peek_count(b))
                tx.journaled = True
                if tx.first_offset < 0:
                    tx.first_offset = e.offset
            seen[e.txid] = tx
        elif tx is None and e.kind == journal.PREPARE:  # a branch prepared with no messages: still in doubt
            tx = seen[e.txid] = table.recovered(e.txid, True, now)
            tx.state, tx.journaled, tx.first_offset = PREPARED, True, e.offset
        elif tx is None:
            continue  # a decision about a transaction whose data is older than the log start, or finished
        elif e.kind == journal.PREPARE:
            tx.state, tx.xa = PREPARED, True
        elif e.kind == journal.COMMIT:
            tx.state, tx.heuristic = COMMITTING, bool(e.body[0])
            tx.scan_from = {(t, q): s for t, q, s in e.body[1]}
        elif e.kind == journal.ROLLBACK:
            table.finish(tx, ROLLED_BACK)
        elif e.kind == journal.APPLIED:
            table.finish(tx, COMMITTED)
    counts = Counter()
    for txid, tx in seen.items():
        if table.txs.get(txid) is not tx:
            continue
        counts[tx.state] += 1
        if tx.state == OPEN:  # never prepared: rolled back, as MetaQ's recovery does
            svc._write(p, tx, [journal.rollback(False, "the broker restarted before it was prepared")], 1,
                       lambda reply: None)
            table.finish(tx, ROLLED_BACK)
        elif tx.state == COMMITTING:
            missing = {tp: _missing(svc.fetch, tp, tx.scan_from.get(tp, 0), batches)
                       for tp, batches in tx.parts.items()}
            n = sum(map(len, missing.values()))
            log.info("transaction %s: committed before the restart; %d of its %d batches to append again",
                     txid, n, sum(map(len, tx.parts.values())))
            tx.parts = missing
            svc.apply(tx)
    if counts:
        log.info("transaction journal %s/%d: %d rolled back (open at the restart), %d prepared (waiting), "
                 "%d committed (appends checked)", journal.TOPIC, p, counts[OPEN], counts[PREPARED],
                 counts[COMMITTING])


def read(fetch, topic: str, p: int):
    """Every journal record of partition ``p`` up to its durable end."""
    key = handoff.tp_key(topic, p)
    end = fetch.hwm.get(key, 0)
    at = fetch.log_start.get(key, 0)
    reader = fetch.reader(topic, p)
    while at < end:
        data = reader.read(at, _CHUNK, end)
        if not data:
            break
        yield from journal.decode(data)
        last = journal.last_offset(data)
        if last <= at:
            break
        at = last


def _missing(fetch, tp: tuple[str, int], scan_from: int, batches: list) -> list:
    """The ``batches`` that partition ``tp`` does not hold after ``scan_from``
    (matched by CRC32C and record count, each match used once)."""
    topic, partition = tp
    key = handoff.tp_key(topic, partition)
    end = fetch.hwm.get(key, 0)
    at = max(scan_from, fetch.log_start.get(key, 0))
    held = Counter()
    reader = fetch.reader(topic, partition)
    while at < end:
        data = reader.read(at, _CHUNK, end)
        if not data:
            break
        mv = memoryview(data)
        for _, h in batch.iter_batches(mv):
            if h.base_offset >= scan_from:
                held[(h.crc, h.record_count)] += 1
            at = h.base_offset + h.record_count
    out = []
    for b in batches:
        k = (_CRC.unpack_from(b, 20)[0], batch.peek_count(b))
        if held[k]:
            held[k] -= 1
        else:
            out.append(b)
    return out
