"""The producer's transaction API: ``transaction()`` and PEP 249's two-phase
commit extension (``xid``, ``tpc_begin`` ... ``tpc_recover``), so a
coordinator that drives psycopg's ``tpc_*`` methods drives hpbroker the
same way (docs/transactions.md; examples/xa_postgres.py).

An XID ``(format_id, gtrid, bqual)`` travels as the txid
``XID:<format_id>:<hex gtrid>:<hex bqual>`` (MetaQ's key form).  As in the
X/Open XA specification, ``gtrid`` and ``bqual`` are at most 64 bytes
(UTF-8) and ``format_id`` is a non-negative 31-bit integer.
"""

from __future__ import annotations

from typing import NamedTuple

from hpbroker.client.transaction import Transaction, TxChannel
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode

MAX_XID_PART = 64


class Xid(NamedTuple):
    format_id: int
    gtrid: str
    bqual: str

    @property
    def txid(self) -> str:
        return f"XID:{self.format_id}:{self.gtrid.encode().hex()}:{self.bqual.encode().hex()}"

    @classmethod
    def from_txid(cls, txid: str) -> "Xid | None":
        """The XID of an ``XID:...`` txid; None for a local transaction's."""
        parts = txid.split(":")
        if len(parts) < 4 or parts[0] != "XID":
            return None
        try:
            return cls(int(parts[1]), bytes.fromhex(parts[2]).decode(), bytes.fromhex(parts[3]).decode())
        except (ValueError, UnicodeDecodeError):
            return None


def make_xid(format_id: int, gtrid: str, bqual: str) -> Xid:
    if not isinstance(format_id, int) or not 0 <= format_id < 1 << 31:
        raise ValueError(f"format_id must be an integer in [0, 2**31), got {format_id!r}")
    for name, v in (("gtrid", gtrid), ("bqual", bqual)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a str, got {type(v).__name__}")
        if len(v.encode()) > MAX_XID_PART:
            raise ValueError(f"{name} is {len(v.encode())} bytes; XA allows at most {MAX_XID_PART}")
    return Xid(format_id, gtrid, bqual)


def _as_xid(xid) -> Xid:
    if isinstance(xid, Xid):
        return xid
    try:  # psycopg's Xid, or any (format_id, gtrid, bqual)
        f, g, b = (xid.format_id, xid.gtrid, xid.bqual) if hasattr(xid, "gtrid") else tuple(xid)
    except (TypeError, ValueError):
        raise TypeError(f"not an XID: {xid!r}") from None
    return make_xid(f, g, b)


class Transactional:
    """Mixed into :class:`hpbroker.client.producer.Producer`."""

    transaction_timeout_ms: int
    transaction_flush_bytes: int
    _tx_channel: TxChannel | None = None
    _xa: Transaction | None = None

    def _channel(self) -> TxChannel:
        if self._tx_channel is None:
            self._tx_channel = TxChannel(self._bootstrap, request_timeout_ms=self.request_timeout_ms,
                                         connect_timeout_ms=self.connect_timeout_ms)
        return self._tx_channel

    def transaction(self, timeout_ms: int | None = None) -> Transaction:
        """A local transaction: ``with p.transaction() as tx: tx.send(...)``.
        Rolled back on an exception in the block, by ``rollback()``, when
        its timeout passes, or when this producer's connection goes."""
        ch = self._channel()
        return Transaction(self, ch, ch.next_local_txid(), xa=False,
                           timeout_ms=self.transaction_timeout_ms if timeout_ms is None else timeout_ms,
                           flush_bytes=self.transaction_flush_bytes)

    # -- PEP 249, two-phase commit extension -------------------------------------------

    def xid(self, format_id: int, gtrid: str, bqual: str) -> Xid:
        return make_xid(format_id, gtrid, bqual)

    def tpc_begin(self, xid) -> None:
        """Begin XA branch ``xid``; until tpc_commit/tpc_rollback, ``send``
        and ``send_batch`` join it (and return None)."""
        if self._xa is not None:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE,
                              f"tpc_begin while branch {self._xa.txid} is {self._xa.state}: finish it first")
        xid = _as_xid(xid)
        self._xa = Transaction(self, self._channel(), xid.txid, xa=True, timeout_ms=self.transaction_timeout_ms,
                               flush_bytes=self.transaction_flush_bytes)

    def tpc_prepare(self) -> None:
        if self._xa is None:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, "tpc_prepare outside a transaction (no tpc_begin)")
        self._xa.prepare()

    def tpc_commit(self, xid=None) -> None:
        """With no argument: commit the current branch (one phase when it
        was not prepared).  With ``xid``: commit that prepared branch (a
        recovering coordinator's call; it may be on any acceptor)."""
        if xid is None:
            tx = self._current("tpc_commit")
            try:
                tx.commit(one_phase=tx.state == "open")
            finally:
                if tx.state in ("committed", "rolled_back"):
                    self._xa = None
            return
        self._channel().end_anywhere(_as_xid(xid).txid, "commit")

    def tpc_rollback(self, xid=None) -> None:
        if xid is None:
            tx = self._current("tpc_rollback")
            try:
                tx.rollback()
            finally:
                self._xa = None
            return
        self._channel().end_anywhere(_as_xid(xid).txid, "rollback")

    def tpc_recover(self) -> list[Xid]:
        """The prepared XA branches of this broker, waiting for an outcome."""
        out = []
        for rep in self._channel().on_every_acceptor(lambda i: m.TxList(id=i, states=["prepared"])):
            for info in rep.transactions:
                x = Xid.from_txid(info.txid) if info.xa else None
                if x is not None:
                    out.append(x)
        return out

    def _current(self, what: str) -> Transaction:
        if self._xa is None:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"{what} outside a transaction (no tpc_begin)")
        return self._xa

    def _close_transactions(self) -> None:
        if self._tx_channel is not None:
            self._tx_channel.close()
            self._tx_channel = None
