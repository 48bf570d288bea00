"""MetaQ's transaction keys and XA error replies, sans-IO.

A ``transaction`` line and a transactional ``put`` name their transaction
by a key (MetaQ's ``TransactionId.valueOf``):

=================================================  ===============================
key                                                meaning
=================================================  ===============================
``TX:<sessionId>:<n>``                             a local transaction (``n`` an int)
``XID:<formatId>:<hex gtrid>:<hex bqual>:<uq>``    an XA branch, as MetaQ's clients
                                                   send it (``uq``: the unique
                                                   qualifier of the resource)
``XID:<formatId>:<hex gtrid>:<hex bqual>``         an XA branch without a qualifier:
                                                   hpbroker's own XID form
                                                   (hpbroker.client.xa), so a text
                                                   client can resolve a branch a
                                                   ZeroMQ producer prepared
``null``                                           no transaction (RECOVER's key)
=================================================  ===============================

The key, normalised as MetaQ prints it (the counter as a decimal number,
the hex in lower case), is hpbroker's ``txid``: ``hpbroker tx list`` shows
the same string a MetaQ client sent.  XA's limits apply: ``formatId`` a
32-bit int, ``gtrid`` and ``bqual`` at most 64 bytes each.

Errors of transaction commands are answered as MetaQ's
``TransactionProcessor`` answers an ``XAException``: ``result 500`` with the
body ``XAException:code=<n>,msg=<text>``, which MetaQ's Java client turns
back into an ``XAException`` with that code (:func:`xa_error`).
"""

from __future__ import annotations

import re
import zlib
from typing import NamedTuple

from hpbroker.protocol.errors import ErrorCode

MAX_TXID = 300  # hpbroker.protocol.tx_messages.MAX_TXID
MAX_XID_PART = 64

# javax.transaction.xa.XAResource / XAException codes
XA_OK = 0
XA_RDONLY = 3
XA_HEURRB = 6
XA_HEURCOM = 7
XA_RBOTHER = 104
XA_RBTIMEOUT = 106
XAER_RMERR = -3
XAER_NOTA = -4
XAER_INVAL = -5
XAER_PROTO = -6
XAER_RMFAIL = -7

LOCAL, XA, NULL = "local", "xa", "null"

_INT = re.compile(r"-?[0-9]{1,19}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")


class BadKey(ValueError):
    pass


class TxKey(NamedTuple):
    kind: str  # LOCAL, XA or NULL
    txid: str  # hpbroker's txid: the key, normalised ("null" for NULL)
    uq: str | None = None  # an XA key's unique qualifier


def parse(key: str) -> TxKey:
    """The transaction a MetaQ key names; BadKey (MetaQ's message) when it is malformed."""
    if key == "null":
        return TxKey(NULL, "null")
    parts = key.split(":")
    if parts[0] == "TX":
        if len(parts) != 3 or not parts[1] or not _INT.fullmatch(parts[2]):
            raise BadKey(f"Illegal transaction key:{key} (a local key is TX:<sessionId>:<n>)")
        n = int(parts[2])
        if not -(1 << 31) <= n < 1 << 31:
            raise BadKey(f"Illegal transaction key:{key} (the counter is a 32-bit int)")
        txid = f"TX:{parts[1]}:{n}"
        if len(txid) > MAX_TXID:
            raise BadKey(f"Illegal transaction key:{key[:64]}... (at most {MAX_TXID} characters)")
        return TxKey(LOCAL, txid)
    if parts[0] == "XID":
        if len(parts) not in (4, 5) or not _INT.fullmatch(parts[1]) or (len(parts) == 5 and not parts[4]):
            raise BadKey(f"Illegal transaction key:{key} (an XA key is XID:<formatId>:<hex gtrid>:<hex bqual>:<uq>)")
        fmt = int(parts[1])
        if not -(1 << 31) <= fmt < 1 << 31:
            raise BadKey(f"Illegal transaction key:{key} (formatId is a 32-bit int)")
        for name, h in (("gtrid", parts[2]), ("bqual", parts[3])):
            if not _HEX.fullmatch(h):
                raise BadKey(f"Illegal transaction key:{key} ({name} is not hex)")
            if len(h) > 2 * MAX_XID_PART:
                raise BadKey(f"Illegal transaction key:{key[:64]}... ({name} is {len(h) // 2} bytes; XA allows "
                             f"{MAX_XID_PART})")
        txid = f"XID:{fmt}:{parts[2].lower()}:{parts[3].lower()}"
        uq = parts[4] if len(parts) == 5 else None
        if uq is not None:
            txid += ":" + uq
        if len(txid) > MAX_TXID:
            raise BadKey(f"Illegal transaction key:{key[:64]}... (at most {MAX_TXID} characters)")
        return TxKey(XA, txid, uq)
    raise BadKey(f"Illegal transaction key:{key} (TX:..., XID:... or null)")


def qualifier_of(txid: str) -> str | None:
    """The unique qualifier of an XA txid (None without one)."""
    parts = txid.split(":", 4)
    return parts[4] if len(parts) == 5 else None


def coordinator(txid: str, journal_partitions: int, acceptors: int) -> int:
    """The acceptor coordinating ``txid``: the one serving partition
    ``crc32(txid) % N`` of ``__transactions`` (docs/protocol.md, "Transactions")."""
    return zlib.crc32(txid.encode()) % journal_partitions % acceptors


def xa_error(code: int, message: str) -> str:
    """MetaQ's body for an XAException (TransactionProcessor.responseXAE)."""
    return f"XAException:code={code},msg={message}"


#: hpbroker's code -> the XAException code a MetaQ client gets
_XA_CODE = {
    ErrorCode.UNKNOWN_TRANSACTION: XAER_NOTA,
    ErrorCode.INVALID_TXN_STATE: XAER_PROTO,
    ErrorCode.TRANSACTION_TIMED_OUT: XA_RBTIMEOUT,
    ErrorCode.TRANSACTION_TOO_LARGE: XA_RBOTHER,
    ErrorCode.INVALID_TXID: XAER_INVAL,
    ErrorCode.BAD_REQUEST: XAER_INVAL,
    ErrorCode.NOT_ENOUGH_REPLICAS: XAER_RMFAIL,
    ErrorCode.REQUEST_TIMED_OUT: XAER_RMFAIL,
    ErrorCode.BUSY: XAER_RMFAIL,
    ErrorCode.BROKER_SHUTTING_DOWN: XAER_RMFAIL,
    ErrorCode.NOT_LEADER: XAER_RMFAIL,
    ErrorCode.NOT_COORDINATOR: XAER_RMFAIL,
}


def xa_code(code: int, message: str, action: str) -> int:
    """The XAException code for hpbroker error ``code`` answering
    ``action`` (``commit``, ``rollback``, ``prepare``...).  A branch already
    decided the other way (by an operator: ``hpbroker tx``) is MetaQ's
    heuristic outcome: XA_HEURCOM for a rollback of a committed branch,
    XA_HEURRB for a commit of a rolled-back one."""
    if code == ErrorCode.INVALID_TXN_STATE:
        if action == "rollback" and message.endswith("is already committed"):
            return XA_HEURCOM
        if action == "commit" and message.endswith("is already rolled back"):
            return XA_HEURRB
    return _XA_CODE.get(code, XAER_RMERR)
