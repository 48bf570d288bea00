"""Where a transaction's requests go, and what waits until that is known.

Transaction ``txid`` is coordinated by acceptor ``crc32(txid) % N %
acceptors`` (N: the partitions of ``__transactions``, which the listener
reads from metadata; docs/protocol.md, "Transactions").  Before the
journal exists (the broker's first transaction) a BEGIN goes to acceptor
0, which creates it and answers NOT_COORDINATOR with the coordinator.  A
request for a transaction whose coordinator is not known yet waits in
:attr:`TxRef.queue`, in order, until a TxBegin's answer or a metadata
answer tells it; then all of a transaction's requests go over the one
DEALER socket to that acceptor, which reads them in the order the client
sent them.
"""

from __future__ import annotations

from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.text import txkeys as K

JOURNAL = "__transactions"


class TxRef:
    """What the listener knows of one transaction: where it goes, what waits for that."""

    __slots__ = ("txid", "xa", "coordinator", "queue", "resolving", "by_begin", "finishing", "deadline")

    def __init__(self, txid: str, xa: bool, deadline: float = 0.0):
        self.txid = txid
        self.xa = xa
        self.deadline = deadline  # a local one's: when the broker's timeout rolls it back (monotonic s)
        self.coordinator: int | None = None
        self.queue: list = []  # (make, callback, frames) waiting for the coordinator
        self.resolving = False  # a TxBegin or a metadata request will tell the coordinator
        self.by_begin = False  # ... a TxBegin (its answer, or NOT_COORDINATOR's redirect)
        self.finishing = False  # a commit or rollback is on its way


class Failed:
    """A reply made up here for a request that could not be sent."""

    __slots__ = ("code", "message", "state", "messages", "transactions")

    def __init__(self, code: int, message: str):
        self.code, self.message, self.state, self.messages, self.transactions = code, message, "", 0, []


class Routes:
    def __init__(self, link, partitions: dict, request_timeout_s: float):
        """``partitions``: topic -> partitions, the listener's (updated here from metadata)."""
        self.link = link
        self.partitions = partitions
        self.request_timeout_s = request_timeout_s
        self.waiting: dict[str, TxRef] = {}  # XA branches whose coordinator is being found
        self._meta_in_flight = False

    def xa(self, txid: str) -> TxRef:
        """XA branch ``txid``, routed (or waiting to be)."""
        tx = self.waiting.get(txid)
        if tx is not None:
            return tx
        tx = TxRef(txid, True)
        n = self.journal_partitions()
        if n:
            tx.coordinator = K.coordinator(txid, n, len(self.link.socks))
        else:  # no journal known: ask; the requests wait in order meanwhile
            tx.resolving = True
            self.waiting[txid] = tx
            self.ask_metadata()
        return tx

    def journal_partitions(self) -> int:
        return self.partitions.get(JOURNAL, 0)

    def ask_metadata(self) -> None:
        if self._meta_in_flight:
            return
        self._meta_in_flight = True

        def done(rep, payloads):
            self._meta_in_flight = False
            if not rep.code:
                for t in rep.topics:
                    if t.code == 0:
                        self.partitions[t.name] = len(t.partitions)
            n = self.journal_partitions()
            for txid, tx in list(self.waiting.items()):
                if tx.coordinator is not None or not tx.resolving or tx.by_begin:
                    continue
                del self.waiting[txid]
                if n:
                    self.resolved(tx, K.coordinator(txid, n, len(self.link.socks)))
                elif rep.code:
                    self.unresolved(tx, rep.code, rep.message)
                else:  # no journal: no transaction has ever been begun
                    self.unresolved(tx, ErrorCode.UNKNOWN_TRANSACTION, f"no transaction {txid} on this broker")

        self.link.request(lambda i: m.Metadata(id=i, topics=None), done, 10.0)

    def resolved(self, tx: TxRef, coordinator: int) -> None:
        tx.coordinator, tx.resolving = coordinator, False
        queue, tx.queue = tx.queue, []
        for make, callback, frames in queue:
            self.link.request(make, callback, self.request_timeout_s, partition=coordinator, frames=frames)

    def unresolved(self, tx: TxRef, code: int, message: str) -> None:
        tx.resolving = False
        queue, tx.queue = tx.queue, []
        for _, callback, _ in queue:
            callback(Failed(code, message), [])

    def send(self, tx: TxRef, make, callback, frames=()) -> None:
        if tx.coordinator is None:
            tx.queue.append((make, callback, frames))
        else:
            self.link.request(make, callback, self.request_timeout_s, partition=tx.coordinator, frames=frames)
