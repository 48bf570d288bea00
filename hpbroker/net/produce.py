"""Produce-side bookkeeping of an acceptor, free of sockets.

``check_request_size`` runs before anything is copied anywhere, then
:func:`hpbroker.protocol.check_produce` checks each batch's header, layout
and CRC32C (per batch, never per record).

``hand_off`` copies a checked request into its writer's ring as one
record.  ``Pending`` remembers each produce request that waits for its
writer's group commit (:class:`hpbroker.net.acks.ProduceAcks` turns what
happens to it into replies).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpbroker.ipc import handoff
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.ring import PeerDead, RingClosed, RingFull


#: the least ZMQ_MAXMSGSIZE of the acceptors' client sockets (see frame_cutoff)
MIN_FRAME_CUTOFF = 64 << 20


def frame_cutoff(max_request_bytes: int) -> int:
    """ZMQ_MAXMSGSIZE of the acceptors' client sockets: the largest frame
    ZeroMQ hands to the acceptor.  A larger frame makes ZeroMQ drop the
    connection without the acceptor ever seeing it, so the sender gets no
    reply at all; everything up to here reaches :func:`check_request_size`
    and :func:`hpbroker.protocol.check_produce` and is refused with
    MESSAGE_TOO_LARGE.  Hence the headroom: a client that misjudges the
    limits (docs/protocol.md once gave 8 and 16 MiB) hears why instead of
    timing out.  The cut-off is per frame (ZeroMQ checks each part of a
    multipart message on its own); it bounds what one frame header can make
    the broker allocate."""
    return max(MIN_FRAME_CUTOFF, 4 * max_request_bytes)


class Drops:
    """acks=0 produce requests refused without a reply (docs/protocol.md,
    section 7): counted, and logged at most once per ``every_s`` seconds so
    a fire-and-forget client with a bug cannot flood the log."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.total = 0
        self._since = 0
        self._next_log = 0.0

    def note(self, code: int, message: str, now: float) -> str | None:
        """Count one drop; the line to log, or None while within the interval."""
        self.total += 1
        self._since += 1
        if now < self._next_log:
            return None
        n, self._since = self._since, 0
        self._next_log = now + self.every_s
        return (f"dropped {n} acks=0 produce request{'s' if n > 1 else ''} without a reply ({self.total} in all); "
                f"the last: {ErrorCode(code).name if code in ErrorCode._value2member_map_ else code}: {message}")


def check_request_size(frames, max_request_bytes: int) -> None:
    """Request-wide limits; per-batch checks are protocol.check_produce."""
    if not frames:
        raise BrokerError(ErrorCode.BAD_REQUEST, "produce request carries no payload frames")
    if len(frames) > 0xFFFF:
        raise BrokerError(ErrorCode.BAD_REQUEST, "more than 65535 frames in one produce request")
    total = sum(map(len, frames))
    if total > max_request_bytes:
        raise BrokerError(ErrorCode.MESSAGE_TOO_LARGE, f"request carries {total} payload bytes; the limit is {max_request_bytes}")


def hand_off(ring, token: int, topic_b: bytes, partition: int, batches, epoch: int, timeout: float) -> None:
    """Copy one produce request into ``ring`` (a ring Writer) as one PRODUCE
    record, whole or not at all: raises BrokerError, with nothing written,
    when the ring stays full for ``timeout`` seconds or its writer is gone."""
    try:
        handoff.put_record(ring, handoff.PRODUCE, timeout, token, topic_b, partition, batches, epoch=epoch)
    except RingFull:
        raise BrokerError(ErrorCode.BUSY, "the writer's ring stayed full; the disk is behind, retry later") from None
    except (PeerDead, RingClosed) as e:
        raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, f"the partition's writer is gone ({e})") from None


@dataclass(slots=True)
class Waiting:
    ident: bytes
    req_id: int
    partition: int
    deadline: float
    replicas: bool = False  # acks=all under sync replication: also wait for the slave
    key: str = ""  # "topic/partition"
    offsets: list | None = None
    last: int = -1


class Pending:
    """Produce requests in flight to the writers, by token."""

    def __init__(self, limit: int):
        self.limit = limit
        self._next = 1
        self.by_token: dict[int, Waiting | None] = {}

    def __len__(self) -> int:
        return len(self.by_token)

    def full(self) -> bool:
        return len(self.by_token) >= self.limit

    def add(self, waiting: Waiting | None) -> int:
        """Register a request (None for acks=0, which still needs its
        completion to be consumed) and return its token."""
        token = self._next
        self._next += 1
        self.by_token[token] = waiting
        return token

    def cancel(self, token: int) -> None:
        self.by_token.pop(token, None)

    def complete(self, token: int) -> Waiting | None:
        return self.by_token.pop(token, None)

    def expired(self, now: float) -> list[tuple[int, Waiting]]:
        out = [(t, w) for t, w in self.by_token.items() if w is not None and w.deadline <= now]
        for t, _ in out:
            # The writer may still commit it; its completion is then dropped.
            self.by_token[t] = None
        return out

    def waiting(self) -> list[tuple[int, Waiting]]:
        return [(t, w) for t, w in self.by_token.items() if w is not None]
