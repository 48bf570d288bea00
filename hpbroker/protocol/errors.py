"""Error codes carried in every reply's ``code`` field, and the exceptions
built from them.

=====  ==========================  =========  ==========================================
code   name                        retriable  meaning
=====  ==========================  =========  ==========================================
0      OK                                     success
1      UNKNOWN_TOPIC_OR_PARTITION  no         no such topic, or partition out of range
2      MESSAGE_TOO_LARGE           no         a frame or batch exceeds the broker's limit
3      CORRUPT_BATCH               no         CRC32C mismatch or a bad batch layout
4      PARTITION_FENCED            no         the partition is read-only after a disk failure
5      NOT_LEADER                  yes        this broker does not lead the partition
6      BUSY                        yes        back-pressure (ring full); retry after a backoff
7      BAD_REQUEST                 no         a request that is well-formed msgpack but invalid
8      NOT_ENOUGH_REPLICAS         yes        acks=all could not be satisfied (yet)
9      REQUEST_TIMED_OUT           yes        not durable within ``timeout_ms``; the outcome is
                                              unknown (the batch may still be written)
10     TOPIC_ALREADY_EXISTS        no         CreateTopic for an existing topic
11     OFFSET_OUT_OF_RANGE         no         Fetch below the log start or above the high watermark
12     UNSUPPORTED_VERSION         no         header ``v`` is not a version this broker speaks
13     BROKER_SHUTTING_DOWN        yes        the broker is stopping; retry (elsewhere) later
14     UNSUPPORTED_COMPRESSION     no         a batch's compression bits name a codec this broker
                                              does not take (only 0, none, for now)
15     NOT_COORDINATOR             yes        this acceptor does not coordinate the group; ask
                                              FindCoordinator again
16     UNKNOWN_MEMBER_ID           no         the coordinator does not know this member (its
                                              session expired, it left, or the broker restarted):
                                              rejoin with member_epoch 0
17     FENCED_MEMBER_EPOCH         no         a stale member epoch, or a commit for a partition
                                              the member does not own (any more): it was moved
18     GROUP_ID_NOT_FOUND          no         DescribeGroup of a group with no members and no
                                              committed offsets
19     NON_EMPTY_GROUP             no         an admin commit (no member id) while the group has
                                              live members
20     DUPLICATE_SEQUENCE_NUMBER   no         an idempotent producer's batch older than the last
                                              5 the partition remembers: written long ago
21     OUT_OF_ORDER_SEQUENCE_NUMBER no        an idempotent producer's batch that does not follow
                                              its last one (a gap): resend from the first
                                              unacknowledged batch
22     UNKNOWN_TRANSACTION         no         no such transaction: never begun, finished and
                                              forgotten, or lost with a restart before prepare
23     INVALID_TXN_STATE           no         the request does not fit the transaction's state:
                                              a second begin, a send or prepare after prepare,
                                              prepare of a local transaction, a two-phase commit
                                              of an unprepared branch, a finished transaction
24     TRANSACTION_TOO_LARGE       no         past transactions.max_transaction_bytes, or the
                                              broker's memory for open transactions is full; the
                                              transaction is rolled back
25     TRANSACTION_TIMED_OUT       no         rolled back by its timeout before this request
26     INVALID_TXID                no         a txid longer than 300 characters, or an XID whose
                                              parts are out of range
30     NOT_AUTHORIZED              no         the client's principal (its CURVE certificate's name) may
                                              not do this (docs/security.md); also raised locally by a
                                              client whose CURVE handshake the broker refused
32     CORRUPT_STORED_BATCH        no         a batch in the broker's own log fails its CRC32C or
                                              layout check (damaged at rest): the partition is
                                              damaged at that offset; an operator must act
99     INTERNAL                    no         a broker bug; the message says more
=====  ==========================  =========  ==========================================
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    OK = 0
    UNKNOWN_TOPIC_OR_PARTITION = 1
    MESSAGE_TOO_LARGE = 2
    CORRUPT_BATCH = 3
    PARTITION_FENCED = 4
    NOT_LEADER = 5
    BUSY = 6
    BAD_REQUEST = 7
    NOT_ENOUGH_REPLICAS = 8
    REQUEST_TIMED_OUT = 9
    TOPIC_ALREADY_EXISTS = 10
    OFFSET_OUT_OF_RANGE = 11
    UNSUPPORTED_VERSION = 12
    BROKER_SHUTTING_DOWN = 13
    UNSUPPORTED_COMPRESSION = 14
    NOT_COORDINATOR = 15
    UNKNOWN_MEMBER_ID = 16
    FENCED_MEMBER_EPOCH = 17
    GROUP_ID_NOT_FOUND = 18
    NON_EMPTY_GROUP = 19
    DUPLICATE_SEQUENCE_NUMBER = 20
    OUT_OF_ORDER_SEQUENCE_NUMBER = 21
    UNKNOWN_TRANSACTION = 22
    INVALID_TXN_STATE = 23
    TRANSACTION_TOO_LARGE = 24
    TRANSACTION_TIMED_OUT = 25
    INVALID_TXID = 26
    NOT_AUTHORIZED = 30
    CORRUPT_STORED_BATCH = 32
    INTERNAL = 99


RETRIABLE: frozenset[int] = frozenset(
    {
        ErrorCode.BUSY,
        ErrorCode.NOT_LEADER,
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.BROKER_SHUTTING_DOWN,
        ErrorCode.NOT_COORDINATOR,
    }
)


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_CODE_{code}"


class BrokerError(Exception):
    """An error reply from the broker (or the client's local equivalent).

    ``code`` is an :class:`ErrorCode` value (kept as a plain int when the
    broker sent a code this client does not know), ``message`` the broker's
    explanation.  Client futures raise this.
    """

    def __init__(self, code: int, message: str = ""):
        try:
            code = ErrorCode(code)
        except ValueError:
            code = int(code)
        self.code = code
        self.message = message
        super().__init__(f"{code_name(code)}: {message}" if message else code_name(code))

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE


class ProtocolError(BrokerError):
    """Frames that do not decode into a valid message.

    ``id`` is the request's correlation id when the header got far enough to
    reveal it, else -1.  ``kind`` is the request type the header names in
    ``"t"`` (e.g. ``"Fetch"``) when it is a readable map, else "", and
    ``acks`` the produce request's ``acks`` when the header shows it, else
    None.  The acceptor answers with the reply type of ``kind`` when it knows
    it, else an ``ErrorReply``, and not at all for acks=0
    (:func:`hpbroker.protocol.codec.protocol_error_frames`, ``wants_reply``).
    """

    def __init__(self, code: int, message: str = "", id: int = -1, *, kind: str = "", acks: int | None = None):
        super().__init__(code, message)
        self.id = id
        self.kind = kind
        self.acks = acks
