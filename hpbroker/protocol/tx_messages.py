"""Transaction requests and replies (docs/protocol.md, "Transactions").

Every request names its transaction by ``txid``, a string the client
chooses: ``TX:<session>:<n>`` for a local transaction and
``XID:<formatId>:<hex gtrid>:<hex bqual>`` for an XA branch (MetaQ's key
forms).  A transaction is coordinated by one acceptor, the one serving
partition ``crc32(txid) % N`` of the internal ``__transactions`` topic;
:class:`TxBegin` to any other acceptor is answered with NOT_COORDINATOR
and the coordinator's index and endpoint, and every later request goes
there.

Payload frames 1..n of :class:`TxProduce` and :class:`TxEnd` are record
batches (hpbroker.batch format), ``parts[i].batches`` of them for
``parts[i]`` in order.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from hpbroker.protocol.base import M, Partition, TimeoutMs, TopicName, _Reply, _Request

#: checked by the coordinator (INVALID_TXID past ``MAX_TXID``), not by the decoder
TxId = Annotated[str, M(min_length=1, max_length=4096)]
MAX_TXID = 300


class TxPart(msgspec.Struct, frozen=True, array_like=True):
    """``batches`` payload frames for one topic-partition."""

    topic: TopicName
    partition: Partition
    batches: Annotated[int, M(ge=1)]


class TxBegin(_Request):
    """Open a transaction.  ``timeout_ms``: it is rolled back this long
    after it began unless prepared or finished (capped by the broker's
    ``transactions.max_timeout_ms``)."""

    txid: TxId
    xa: bool = False
    timeout_ms: TimeoutMs = 60_000


class TxProduce(_Request):
    """Add batches to an open transaction (journalled, invisible to
    consumers); answered once they are durable in the journal."""

    txid: TxId
    parts: list[TxPart]


class TxEnd(_Request):
    """Finish (``commit``, ``rollback``) or ``prepare`` a transaction,
    with its last batches in the payload frames (commit and prepare only).

    * ``commit`` of a local transaction, or of an XA branch with
      ``one_phase``: the batches and the decision are one journal write.
    * ``commit`` of a prepared XA branch: two-phase commit; no batches.
    * ``heuristic``: an operator's decision for an in-doubt transaction
      (``hpbroker tx commit|rollback``); journalled as such.

    Answered once the decision is durable (and, under sync replication, on
    the slave), and for a commit once the messages are appended and durable
    in their partitions."""

    txid: TxId
    action: Literal["prepare", "commit", "rollback"]
    parts: list[TxPart] = []
    one_phase: bool = False
    heuristic: bool = False


class TxList(_Request):
    """The transactions this acceptor coordinates (``states`` None: all)."""

    states: list[Literal["open", "prepared", "committing", "rolling_back"]] | None = None


class TxBeginReply(_Reply):
    #: on NOT_COORDINATOR: where to go
    coordinator: int = -1
    endpoint: str = ""
    #: the timeout in force (the request's, capped)
    timeout_ms: int = 0


class TxReply(_Reply):
    #: the transaction's state after the request: open, prepared, committed, rolled_back
    state: str = ""
    #: bytes and messages held so far
    bytes: int = 0
    messages: int = 0


class TxInfo(msgspec.Struct, frozen=True):
    txid: str
    xa: bool
    state: str
    age_ms: int
    bytes: int
    messages: int
    partitions: list[tuple[str, int]] = []
    #: the acceptor coordinating it
    coordinator: int = 0


class TxListReply(_Reply):
    transactions: list[TxInfo] = []


TX_REQUEST_TYPES: tuple[type, ...] = (TxBegin, TxProduce, TxEnd, TxList)
TX_REPLY_TYPES: tuple[type, ...] = (TxBeginReply, TxReply, TxListReply)
TX_REPLY_FOR: dict[type, type] = {TxBegin: TxBeginReply, TxProduce: TxReply, TxEnd: TxReply, TxList: TxListReply}
