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
                                  batch found there with the transaction's
                                  mark and index, CRC32C and record count
                                  (hpbroker.tx.journal, "Marks") is not
                                  appended twice
ROLLBACK, APPLIED                 finished: forgotten (outcome remembered)
================================  ==========================================

Reading starts at the partition's ``tx.checkpoint`` (below it no live
transaction has records), or its log start.  A COPY ... COPIED run replaces
the transaction's batches with the copy; a copy cut short by a crash is
ignored.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import Counter

from hpbroker import batch
from hpbroker.io import layout
from hpbroker.io.storage import TX_CHECKPOINT
from hpbroker.ipc import handoff
from hpbroker.protocol.errors import BrokerError
from hpbroker.tx import journal
from hpbroker.tx.table import COMMITTED, COMMITTING, OPEN, PREPARED, ROLLED_BACK

log = logging.getLogger("hpbroker.transactions")

_CHUNK = 1 << 20
_CRC = struct.Struct("<I")
CHECKPOINT = TX_CHECKPOINT


def checkpoint_path(data_dir: str, p: int) -> str:
    return os.path.join(layout.partition_dir(data_dir, journal.TOPIC, p), CHECKPOINT)


def read_checkpoint(data_dir: str, p: int) -> int:
    try:
        with open(checkpoint_path(data_dir, p), "rb") as f:
            return int(json.loads(f.read())["from"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0


def recover(svc, p: int) -> None:
    """Rebuild ``svc``'s table from journal partition ``p`` and finish
    what a crash left half done."""
    table, now = svc.table, svc.clock()
    seen = {}
    copies: dict[str, tuple[int, dict]] = {}
    for e in read(svc.fetch, journal.TOPIC, p, read_checkpoint(svc.cfg.broker.data_dir, p)):
        tx = table.txs.get(e.txid)
        if e.kind == journal.COPY:
            if tx is None:
                tx = seen[e.txid] = table.recovered(e.txid, False, now)
            copies[e.txid] = (e.offset, {})
            continue
        if e.kind == journal.DATA and e.txid in copies:
            topic, partition, b = e.body
            copies[e.txid][1].setdefault((topic, partition), []).append(b)
            continue
        if e.kind == journal.COPIED:
            at, parts = copies.pop(e.txid, (-1, None))
            if tx is None or parts is None:
                continue
            table.replace_parts(tx, parts)
            tx.messages = sum(batch.peek_count(b) for bs in parts.values() for b in bs)
            tx.first_offset, tx.first_ms = at, e.ms
            state, tx.heuristic, scan_from = e.body[:3]
            tx.mark = e.body[3] if len(e.body) > 3 else -1
            if state == PREPARED:
                tx.state, tx.xa = PREPARED, True
            else:
                tx.state, tx.scan_from = COMMITTING, {(t, q): s for t, q, s in scan_from}
            continue
        if e.kind == journal.DATA:
            if tx is None:
                tx = table.recovered(e.txid, False, now)
            if tx.state == OPEN:
                topic, partition, b = e.body
                table.add(tx, topic, partition, b, batch.peek_count(b))
                tx.journaled = True
                if tx.first_offset < 0:
                    tx.first_offset = e.offset
                    tx.first_ms = e.ms
            seen[e.txid] = tx
        elif tx is None and e.kind == journal.PREPARE:  # a branch prepared with no messages: still in doubt
            tx = seen[e.txid] = table.recovered(e.txid, True, now)
            tx.state, tx.journaled, tx.first_offset, tx.first_ms = PREPARED, True, e.offset, e.ms
        elif tx is None:
            continue  # a decision about a transaction whose data is older than the log start, or finished
        if e.kind in (journal.PREPARE, journal.COMMIT) and e.txid in copies:  # a restatement's end
            at, parts = copies.pop(e.txid)
            table.replace_parts(tx, parts)
            tx.messages = sum(batch.peek_count(b) for bs in parts.values() for b in bs)
        elif e.kind == journal.ROLLBACK:
            copies.pop(e.txid, None)
        if e.kind == journal.PREPARE:
            tx.state, tx.xa = PREPARED, True
        elif e.kind == journal.COMMIT:
            tx.state, tx.heuristic, tx.mark = COMMITTING, bool(e.body[0]), journal.mark_of(p, e.offset)
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
            try:
                svc._write(p, tx, [journal.rollback(False, "the broker restarted before it was prepared")], 1,
                           lambda reply: None)
            except BrokerError as e:  # the next recovery rolls it back again: it is open in the journal
                log.warning("transaction %s: rollback after the restart not journalled: %s", txid, e.message)
            table.finish(tx, ROLLED_BACK)
        elif tx.state == COMMITTING:
            tx.done = {tp: _present(svc.fetch, tp, tx.scan_from.get(tp, 0), tx.mark, batches)
                       for tp, batches in tx.parts.items()}
            total = sum(map(len, tx.parts.values()))
            log.info("transaction %s: committed before the restart; %d of its %d batches to append again",
                     txid, total - sum(map(len, tx.done.values())), total)
            svc.apply(tx)
    if counts:
        log.info("transaction journal %s/%d: %d rolled back (open at the restart), %d prepared (waiting), "
                 "%d committed (appends checked)", journal.TOPIC, p, counts[OPEN], counts[PREPARED],
                 counts[COMMITTING])


#: Recovery reads to the end of the files, not to the high watermark this
#: acceptor has heard of: just after a promotion, the last records the slave
#: wrote may not be reported yet, and a journal read short of them would
#: lose a prepared transaction (its writer has made them durable, or makes
#: them so before anything this coordinator writes after them).
_END = 1 << 62


def read(fetch, topic: str, p: int, start: int = 0):
    """Every journal record of partition ``p`` from ``start`` (or its log
    start) to the end of its files."""
    key = handoff.tp_key(topic, p)
    end = _END
    at = max(fetch.log_start.get(key, 0), start if start <= fetch.hwm.get(key, 0) else 0)
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


def _present(fetch, tp: tuple[str, int], scan_from: int, mark: int, batches: list) -> set[int]:
    """Indexes of the ``batches`` that partition ``tp`` holds after
    ``scan_from``: a batch carrying the transaction's ``mark`` and the
    index, with the CRC32C and record count the marked batch has."""
    topic, partition = tp
    key = handoff.tp_key(topic, partition)
    end = _END
    at = max(scan_from, fetch.log_start.get(key, 0))
    held = set()
    reader = fetch.reader(topic, partition)
    while at < end:
        data = reader.read(at, _CHUNK, end)
        if not data:
            break
        before = at
        for _, h in batch.iter_batches(memoryview(data)):
            if h.base_offset >= scan_from and h.producer_id == mark:
                held.add((h.base_sequence, h.crc, h.record_count))
            at = h.base_offset + h.record_count
        if at <= before:
            break
    out = set()
    for i, b in enumerate(batches):
        if held:
            marked = journal.mark_batch(b, mark, i)
            if (i, _CRC.unpack_from(marked, 20)[0], batch.peek_count(b)) in held:
                out.add(i)
    return out
