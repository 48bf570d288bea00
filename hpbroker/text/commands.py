"""The commands the text protocol's parser returns (hpbroker/text/parser.py).

Plain objects with slots, one per verb; :class:`PutRun` stands for
consecutive puts to one partition read together; :class:`Refused` is input
the parser would not pass on, with the answer's status and opaque.
"""

from __future__ import annotations


class Put:
    __slots__ = ("topic", "partition", "flag", "checksum", "tx_key", "opaque", "body")

    def __init__(self, topic: str, partition: int, flag: int, checksum: int, tx_key: str | None, opaque: bytes, body):
        self.topic = topic
        self.partition = partition
        self.flag = flag
        self.checksum = checksum  # -1: none given (or the 6-field form)
        self.tx_key = tx_key
        self.opaque = opaque  # the client's token, echoed as sent
        self.body = body  # a memoryview into the fed bytes: [attrLen attr] payload

    def __repr__(self):
        return (f"Put({self.topic!r}, {self.partition}, flag={self.flag}, checksum={self.checksum}, "
                f"tx_key={self.tx_key!r}, opaque={self.opaque!r}, body={bytes(self.body)!r})")


class PutRun:
    """Consecutive puts to one topic and partition, without transaction keys,
    read together (the parser's fast path); the same as that many
    :class:`Put` s.  ``flags`` and ``checksums`` are None when all are 0 and
    -1 respectively; ``checksums`` is a list or an int64 numpy array."""

    __slots__ = ("topic", "partition", "bodies", "opaques", "flags", "checksums")

    def __init__(self, topic, partition, bodies, opaques, flags, checksums):
        self.topic, self.partition, self.bodies, self.opaques = topic, partition, bodies, opaques
        self.flags, self.checksums = flags, checksums

    def puts(self) -> list[Put]:
        n = len(self.bodies)
        flags = self.flags or [0] * n
        sums = [-1] * n if self.checksums is None else list(map(int, self.checksums))
        return [Put(self.topic, self.partition, f, c, None, o, b)
                for b, o, f, c in zip(self.bodies, self.opaques, flags, sums)]

    def __repr__(self):
        return f"PutRun({self.topic!r}, {self.partition}, {len(self.bodies)} puts)"


class Get:
    __slots__ = ("topic", "group", "partition", "offset", "max_size", "opaque")

    def __init__(self, topic, group, partition, offset, max_size, opaque):
        self.topic, self.group, self.partition = topic, group, partition
        self.offset, self.max_size, self.opaque = offset, max_size, opaque

    def __repr__(self):
        return f"Get({self.topic!r}, {self.group!r}, {self.partition}, {self.offset}, {self.max_size}, {self.opaque!r})"


class Offset:
    __slots__ = ("topic", "group", "partition", "offset", "opaque")

    def __init__(self, topic, group, partition, offset, opaque):
        self.topic, self.group, self.partition, self.offset, self.opaque = topic, group, partition, offset, opaque

    def __repr__(self):
        return f"Offset({self.topic!r}, {self.group!r}, {self.partition}, {self.offset}, {self.opaque!r})"


class Stats:
    """``opaque`` None: no opaque was sent (memcached's form, answered in memcached's format)."""

    __slots__ = ("item", "opaque")

    def __init__(self, item: str, opaque: bytes | None):
        self.item, self.opaque = item, opaque

    def __repr__(self):
        return f"Stats({self.item!r}, {self.opaque!r})"


class Version:
    __slots__ = ("opaque",)

    def __init__(self, opaque: bytes | None):
        self.opaque = opaque

    def __repr__(self):
        return f"Version({self.opaque!r})"


class Quit:
    __slots__ = ()

    def __repr__(self):
        return "Quit()"


#: MetaQ's transaction types (C/transaction/TransactionInfo.java)
TRANSACTION_TYPES = frozenset({"BEGIN", "END", "PREPARE", "COMMIT_ONE_PHASE", "COMMIT_TWO_PHASE", "ROLLBACK",
                               "RECOVER", "FORGET"})


class Transaction:
    __slots__ = ("tx_key", "session_id", "type", "timeout", "unique_qualifier", "opaque")

    def __init__(self, tx_key, session_id, type, timeout, unique_qualifier, opaque):
        self.tx_key, self.session_id, self.type = tx_key, session_id, type
        self.timeout, self.unique_qualifier, self.opaque = timeout, unique_qualifier, opaque

    def __repr__(self):
        return (f"Transaction({self.tx_key!r}, {self.session_id!r}, {self.type!r}, {self.timeout}, "
                f"{self.unique_qualifier!r}, {self.opaque!r})")


class Refused:
    """Input the parser will not pass on.  ``code`` is MetaQ's status (400
    for bad input); ``opaque`` is the command's when it could be read (the
    answer is then a ``result`` line), else None; ``unknown`` marks an
    unknown verb; ``fatal`` means the parser takes no more input."""

    __slots__ = ("code", "message", "opaque", "fatal", "unknown")

    def __init__(self, code: int, message: str, opaque: bytes | None = None, fatal: bool = False, unknown: bool = False):
        self.code, self.message, self.opaque, self.fatal, self.unknown = code, message, opaque, fatal, unknown

    def __repr__(self):
        return f"Refused({self.code}, {self.message!r}, opaque={self.opaque!r}, fatal={self.fatal}, unknown={self.unknown})"
