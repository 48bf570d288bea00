"""The coordinator's table of transactions, sans-IO: states, limits, timeouts.

=============  ===============================================================
state          meaning
=============  ===============================================================
open           begun; batches may be added (journalled, invisible)
preparing      its PREPARE record is on its way to the journal
prepared       PREPARE is durable: it waits for commit or rollback, for ever
committing     its COMMIT record is on its way, or its batches are being
               appended to their partitions
rolling_back   its ROLLBACK record is on its way
=============  ===============================================================

A finished transaction leaves the table; its outcome (``committed`` or
``rolled_back``) is remembered for the last ``remember`` of them, so that a
client retrying a commit whose reply it lost is told what happened.
"""

from __future__ import annotations

from collections import OrderedDict

from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.tx_messages import MAX_TXID

OPEN, PREPARING, PREPARED, COMMITTING, ROLLING_BACK = "open", "preparing", "prepared", "committing", "rolling_back"
COMMITTED, ROLLED_BACK = "committed", "rolled_back"
TIMED_OUT = "timed_out"  # a finished transaction's outcome: rolled back by its timeout


class Tx:
    __slots__ = ("txid", "xa", "state", "began", "deadline", "parts", "bytes", "messages", "conn", "journaled",
                 "scan_from", "applying", "waiter", "heuristic", "first_offset", "first_ms", "copying", "restate", "mark", "done")

    def __init__(self, txid: str, xa: bool, began: float, deadline: float | None, conn=None):
        self.txid = txid
        self.xa = xa
        self.state = OPEN
        self.began = began
        self.deadline = deadline  # monotonic seconds; None: never times out (prepared, or recovered)
        #: (topic, partition) -> the transaction's batches for it, in order (bytes)
        self.parts: dict[tuple[str, int], list] = {}
        self.bytes = 0
        self.messages = 0
        self.conn = conn  # the client connection (a local transaction is rolled back when it goes)
        self.journaled = False  # has anything of it been written to the journal?
        self.scan_from: dict[tuple[str, int], int] = {}  # committed: where its batches go
        self.applying: set[tuple[str, int]] = set()  # committed: partitions whose append is not durable yet
        self.waiter = None  # (ident, request) to answer when the current step is done
        self.heuristic = False
        self.first_offset = -1  # at or below its first journal record's offset (-1: none written)
        self.first_ms = -1  # when that record was written (wall ms): its age in the journal
        self.copying = False  # a copy to the journal's end is on its way
        self.restate = False  # a journal write of it failed: the next decision writes all of it again
        self.mark = -1  # committed: the producer id its appended batches carry (hpbroker.tx.journal, "Marks")
        #: committed: (topic, partition) -> indexes of its batches durable there
        self.done: dict[tuple[str, int], set[int]] = {}


class TxTable:
    def __init__(self, *, max_timeout_ms: int, max_transaction_bytes: int, max_open_bytes: int,
                 max_open_transactions: int, remember: int):
        self.max_timeout_ms = max_timeout_ms
        self.max_transaction_bytes = max_transaction_bytes
        self.max_open_bytes = max_open_bytes
        self.max_open_transactions = max_open_transactions
        self.remember = remember
        self.txs: dict[str, Tx] = {}
        self.finished: OrderedDict[str, str] = OrderedDict()  # txid -> committed / rolled_back
        self.bytes = 0  # held by all transactions in the table
        self.commits = 0
        self.rollbacks = 0
        self.timeouts = 0

    def __len__(self) -> int:
        return len(self.txs)

    # -- begin, find ------------------------------------------------------------------

    def begin(self, txid: str, xa: bool, timeout_ms: int, now: float, conn=None) -> tuple[Tx, int]:
        """A new open transaction, and the timeout in force (ms)."""
        check_txid(txid)
        if txid in self.txs:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE,
                              f"transaction {txid} already exists ({self.txs[txid].state}): a second begin")
        if len(self.txs) >= self.max_open_transactions:
            raise BrokerError(ErrorCode.BUSY, f"{len(self.txs)} transactions are open on this coordinator "
                                              "(transactions.max_open_transactions): finish some first")
        timeout_ms = min(timeout_ms, self.max_timeout_ms)
        self.finished.pop(txid, None)
        tx = self.txs[txid] = Tx(txid, xa, now, now + timeout_ms / 1000.0, conn)
        return tx, timeout_ms

    def find(self, txid: str) -> Tx:
        tx = self.txs.get(txid)
        if tx is not None:
            return tx
        check_txid(txid)
        outcome = self.finished.get(txid)
        if outcome is None:
            raise BrokerError(ErrorCode.UNKNOWN_TRANSACTION,
                              f"no transaction {txid} on this coordinator (never begun, finished long ago, or an "
                              "open one lost when the broker restarted)")
        raise Finished(txid, outcome)

    def recovered(self, txid: str, xa: bool, now: float) -> Tx:
        """A transaction read back from the journal (no timeout until told)."""
        tx = self.txs.get(txid)
        if tx is None:
            tx = self.txs[txid] = Tx(txid, xa, now, None)
        return tx

    # -- batches ------------------------------------------------------------------------

    def check_add(self, tx: Tx, nbytes: int) -> None:
        """Raise unless ``nbytes`` more may join ``tx`` (which must be open)."""
        if tx.state != OPEN:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE,
                              f"transaction {tx.txid} is {tx.state}: no more messages may join it")
        if tx.bytes + nbytes > self.max_transaction_bytes:
            raise BrokerError(ErrorCode.TRANSACTION_TOO_LARGE,
                              f"transaction {tx.txid} would hold {tx.bytes + nbytes} bytes, more than "
                              f"transactions.max_transaction_bytes ({self.max_transaction_bytes}); it is rolled back")
        if self.bytes + nbytes > self.max_open_bytes:
            raise BrokerError(ErrorCode.TRANSACTION_TOO_LARGE,
                              f"open transactions on this coordinator hold {self.bytes} bytes "
                              f"(transactions.max_open_bytes = {self.max_open_bytes}); this one is rolled back")

    def add(self, tx: Tx, topic: str, partition: int, batch_bytes, messages: int) -> None:
        tx.parts.setdefault((topic, partition), []).append(batch_bytes)
        n = len(batch_bytes)
        tx.bytes += n
        tx.messages += messages
        self.bytes += n

    def replace_parts(self, tx: Tx, parts: dict) -> None:
        """``tx``'s batches are now ``parts`` (a copy read back)."""
        self.bytes -= tx.bytes
        tx.parts = parts
        tx.bytes = sum(len(b) for bs in parts.values() for b in bs)
        self.bytes += tx.bytes

    # -- time and connections -----------------------------------------------------------

    def expired(self, now: float) -> list[Tx]:
        """Open transactions past their deadline (prepared ones have none)."""
        return [tx for tx in self.txs.values() if tx.state == OPEN and tx.deadline is not None and now >= tx.deadline]

    def of_connection(self, conn) -> list[Tx]:
        """The open local transactions begun over connection ``conn``."""
        return [tx for tx in self.txs.values() if tx.conn == conn and tx.state == OPEN and not tx.xa]

    # -- the end ------------------------------------------------------------------------

    def finish(self, tx: Tx, outcome: str) -> None:
        if self.txs.get(tx.txid) is tx:
            del self.txs[tx.txid]
        self.bytes -= tx.bytes
        tx.parts = {}
        if outcome == COMMITTED:
            self.commits += 1
        else:
            self.rollbacks += 1
        if self.remember:
            self.finished[tx.txid] = outcome
            while len(self.finished) > self.remember:
                self.finished.popitem(last=False)


class Finished(BrokerError):
    """The transaction is over; ``outcome`` says how."""

    def __init__(self, txid: str, outcome: str):
        super().__init__(ErrorCode.INVALID_TXN_STATE, f"transaction {txid} is already {outcome.replace('_', ' ')}")
        self.outcome = outcome


def check_txid(txid: str) -> None:
    if len(txid) > MAX_TXID:
        raise BrokerError(ErrorCode.INVALID_TXID, f"a txid has at most {MAX_TXID} characters, got {len(txid)}")
