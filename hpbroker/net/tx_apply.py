"""Commit's appends: a committed transaction's batches into their partitions.

The acceptor's :class:`~hpbroker.net.transactions.TxService` inherits this
part.  Once COMMIT is durable in the journal, each partition's batches are
appended (acks=all), marked with the transaction's mark and index
(:mod:`hpbroker.tx.journal`, "Marks") so a replay finds what landed; a
failed append is retried every ``_RETRY_APPLY_S`` until it lands, and
APPLIED is journalled after the last one.  A produce request for the
journal or a partition is handed to the writers with a
:class:`JournalSink` in place of a client's identity.
"""

from __future__ import annotations

import logging
from typing import Callable

from hpbroker.net import tx_upkeep
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError
from hpbroker.tx import journal
from hpbroker.tx.table import COMMITTED, COMMITTING, Tx

log = logging.getLogger("hpbroker.transactions")

_RETRY_APPLY_S = 1.0


class JournalSink:
    """Where the produce reply of a journal write goes: ``then(reply)``
    returns what to answer the client with, or None."""

    __slots__ = ("then",)

    def __init__(self, then: Callable):
        self.then = then

    def done(self, reply):
        return self.then(reply)


class TxApply:
    """TxService's appends at commit (it provides ``table``, ``tcfg``,
    ``cluster``, ``produce``, ``clock``, ``retry_apply``, ``_chunk`` and
    ``_write``)."""

    def apply(self, tx: Tx):
        """Append the committed ``tx``'s batches that their partitions do not
        hold yet, marked (hpbroker.tx.journal, "Marks"): one produce request
        per partition (several, each whole, for a share larger than a
        request may be).  -> the client's answer when it is due already
        (nothing to append), or None."""
        tx.state = COMMITTING
        self.retry_apply.pop(tx.txid, None)
        for tp, batches in tx.parts.items():
            done = tx.done.setdefault(tp, set())
            todo = [i for i in range(len(batches)) if i not in done]
            for chunk in tx_upkeep.chunks_of(todo, lambda i, bs=batches: len(bs[i]), self._chunk):
                req = m.Produce(id=0, topic=tp[0], partition=tp[1], acks=-1,
                                timeout_ms=self.tcfg.decision_timeout_ms)
                key = (tp, chunk[0])
                tx.applying.add(key)
                try:
                    self.produce(JournalSink(lambda reply, key=key, chunk=chunk: self._after_apply(tx, key, chunk,
                                                                                                   reply)),
                                 req, [journal.mark_batch(batches[i], tx.mark, i) for i in chunk])
                except BrokerError as e:
                    tx.applying.discard(key)
                    self._apply_failed(tx, tp, e.message)
        return self._maybe_applied(tx)

    def _after_apply(self, tx: Tx, key, chunk: list[int], reply):
        tx.applying.discard(key)
        tp = key[0]
        if reply.code:
            self._apply_failed(tx, tp, reply.message)
        else:  # durable there: never appended again
            tx.done.setdefault(tp, set()).update(chunk)
        return self._maybe_applied(tx)

    def _apply_failed(self, tx: Tx, tp, why: str) -> None:
        self.apply_failures += 1
        log.error("transaction %s is committed but its append to %s/%d failed (%s): retrying", tx.txid, *tp, why)
        self.retry_apply[tx.txid] = self.clock() + _RETRY_APPLY_S

    def _maybe_applied(self, tx: Tx):
        if tx.applying:
            return None
        answer = None
        if tx.waiter is not None:
            ident, req = tx.waiter
            tx.waiter = None
            if tx.txid in self.retry_apply:
                answer = ident, m.TxReply(id=req.id, state=COMMITTED,
                                          message="committed; some of its messages are not appended yet (retrying)")
            else:
                answer = ident, m.TxReply(id=req.id, state=COMMITTED, messages=tx.messages, bytes=tx.bytes)
        if tx.txid not in self.retry_apply:
            try:
                p = journal.partition_for(tx.txid, self.cluster.view.topics[journal.TOPIC])
                self._write(p, tx, [journal.applied()], 1, lambda reply: None)
            except BrokerError as e:  # recovery finds it committed and checks every batch: harmless
                log.info("transaction %s: APPLIED not journalled (%s)", tx.txid, e.message)
            self.table.finish(tx, COMMITTED)
        return answer
