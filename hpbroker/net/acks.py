"""When and how a produce request is answered: a sans-IO ack object.

An acceptor hands each produce request to a writer and then waits for
news that can answer it.  :class:`ProduceAcks` holds those requests and
turns each piece of news into the replies to send now, as ``(ident,
ProduceReply)`` pairs.  It owns no socket and reads no clock (the caller
passes ``now``), so every path below is tested without processes
(tests/test_produce_acks.py).

========================  ===============================================
event                     what it can answer
========================  ===============================================
:meth:`on_completions`    a writer's group commit: durable, or failed.  A
                          durable acks=all on a sync master is held for
                          the slaves instead
:meth:`on_replica_state`  the replicator's in-sync set and replicated
                          offsets: held requests released, or failed when
                          too few replicas are left in sync
:meth:`on_slave_ack`      a slave writer's report of a flush: the held
                          requests it covers released
:meth:`tick`              the time: requests past their ``timeout_ms``
:meth:`shutdown`          the broker stops: everything still waiting
========================  ===============================================

acks=0 requests are registered too (their completion must be consumed) but
never answered.  Every reply is built by :func:`_reply`, with the code and
message of one row of the outcome table below (or the writer's own, for
a completion).  Which held request a slave's news covers is
:class:`hpbroker.replication.ack_policy.AckPolicy`'s business.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from hpbroker.config import ReplicationConfig
from hpbroker.ipc import replica as ipc_replica
from hpbroker.ipc.handoff import tp_key
from hpbroker.net.produce import Pending, Waiting
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.replication.ack_policy import AckPolicy

Reply = tuple[bytes, m.ProduceReply]


class Outcome(NamedTuple):
    code: int
    message: str
    offsets: bool = False  # does the reply carry the base offsets the master assigned?
    partition: bool = True  # does it name the partition?


# How a waiting request ends, other than by its writer's completion (which
# carries its own code, message and offsets).  STOPPED alone has never named
# the partition; kept, so that the wire does not change here.
REPLICATED = Outcome(ErrorCode.OK, "", offsets=True)
OUT_OF_SYNC = Outcome(ErrorCode.NOT_ENOUGH_REPLICAS, "durable on the master, but the slave fell out of sync before "
                                                     "confirming it (min_insync_replicas not met)")
TIMED_OUT = Outcome(ErrorCode.REQUEST_TIMED_OUT, "not durable within timeout_ms; the batch may still be written")
SLAVE_TIMED_OUT = Outcome(ErrorCode.REQUEST_TIMED_OUT, "durable on the master; the slave did not confirm within timeout_ms")
STOPPED = Outcome(ErrorCode.BROKER_SHUTTING_DOWN, "broker stopped before the batch was durable; outcome unknown",
                  partition=False)
SLAVE_STOPPED = Outcome(ErrorCode.BROKER_SHUTTING_DOWN,
                        "broker stopped before the slave confirmed; durable on the master only")

_NO_PARTITION = m.ProduceReply(id=0).partition  # the field's default


def _reply(w: Waiting, code: int, message: str, offsets: list[int] | None = None, partition: bool = True) -> Reply:
    """The one place a ProduceReply is built."""
    return w.ident, m.ProduceReply(id=w.req_id, code=code, message=message,
                                   base_offsets=[] if offsets is None else offsets,
                                   partition=w.partition if partition else _NO_PARTITION)


def _answer(w: Waiting, outcome: Outcome) -> Reply:
    return _reply(w, outcome.code, outcome.message, w.offsets if outcome.offsets else None, outcome.partition)


class ProduceAcks:
    """The produce requests an acceptor has handed to its writers and not
    yet answered, by token, and the acks=all among them held for the slaves."""

    def __init__(self, max_pending: int, replication: ReplicationConfig) -> None:
        self.pending = Pending(max_pending)
        self.policy = AckPolicy(replication)

    def __len__(self) -> int:
        """Requests in flight to the writers, acks=0 and timed out ones included."""
        return len(self.pending)

    @property
    def waiting(self) -> bool:
        """Is any request still owed an answer?"""
        return bool(self.pending.waiting()) or self.policy.waiting

    # -- requests in ---------------------------------------------------------------

    def admit(self, acks: int, role: str) -> bool:
        """Does a request with ``acks`` wait for the slaves too?  Raises
        NOT_ENOUGH_REPLICAS when it would and too few are in sync."""
        replicas = acks == -1 and self.policy.sync(role)
        if replicas:
            self.policy.check_enough()
        return replicas

    def register(self, ident: bytes, req, partition: int, now: float, replicas: bool = False) -> int:
        """Remember ``req`` (a Produce or ProduceMessages for ``partition``)
        until it is answered; -> the token its ring record carries.  Raises
        BUSY when ``max_pending`` requests already wait."""
        if self.pending.full():
            raise BrokerError(ErrorCode.BUSY, f"{len(self.pending)} requests already wait for the disk; retry later")
        waiting = None
        if req.acks != 0:
            waiting = Waiting(ident, req.id, partition, now + req.timeout_ms / 1000.0,
                              replicas=replicas, key=tp_key(req.topic, partition))
        return self.pending.add(waiting)

    def cancel(self, token: int) -> None:
        """The request never reached its writer (the caller answers it)."""
        self.pending.cancel(token)

    # -- events -> replies -------------------------------------------------------------

    def on_completions(self, done) -> list[Reply]:
        """``done``: a Completions message's ``[token, code, message, base_offsets, last_offset]``."""
        out = []
        for token, code, message, offsets, last in done:
            w = self.pending.complete(token)
            if w is None:
                continue  # acks=0, or already answered as timed out
            if code == 0 and w.replicas:
                w.offsets, w.last = offsets, last
                if self.policy.hold(w):
                    continue
            out.append(_reply(w, code, message, offsets))
        return out

    def on_replica_state(self, state: ipc_replica.ReplicaState) -> list[Reply]:
        released, failed = self.policy.update(state)
        return [_answer(w, REPLICATED) for w in released] + [_answer(w, OUT_OF_SYNC) for w in failed]

    def on_slave_ack(self, raw: bytes, role: str, leader_epoch: int) -> list[Reply]:
        """``raw``: a SlaveAck as it came off the wire.  The port is open to
        anyone, so bytes that do not decode, or any report while this broker
        is not a master, are counted as refused and never trusted."""
        try:
            ack = ipc_replica.slave_ack_decoder.decode(raw)
        except msgspec.DecodeError:
            self.policy.direct_refused += 1
            return []
        if role != "master":
            self.policy.direct_refused += 1
            return []
        return [_answer(w, REPLICATED) for w in self.policy.direct_ack(ack.slave_id, ack.epoch, ack.durable, leader_epoch)]

    def tick(self, now: float) -> list[Reply]:
        """Answer what has waited past its ``timeout_ms`` by ``now``.  A
        writer may still commit such a request; its completion is dropped."""
        out = [_answer(w, SLAVE_TIMED_OUT) for w in self.policy.expired(now)]
        out += [_answer(w, TIMED_OUT) for _, w in self.pending.expired(now)]
        return out

    def shutdown(self) -> list[Reply]:
        """Answer everything still waiting, and forget it."""
        out = []
        for token, w in self.pending.waiting():
            out.append(_answer(w, STOPPED))
            self.pending.cancel(token)
        out += [_answer(w, SLAVE_STOPPED) for w in self.policy.take_all()]
        return out
