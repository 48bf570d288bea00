"""Spill groups: one Future for a run of spilled messages of one partition.

A message the Producer spills (:mod:`~hpbroker.client.spiller`) joins the
open group of its (topic, stored partition); the future ``send()`` returns
is a :class:`~hpbroker.client.records.SpilledFuture` that points at the
group's Future and its own index.  The re-sends
(:mod:`~hpbroker.client.spill_resend`) write each member's outcome into the
group and resolve its Future once every member is answered.
"""

from __future__ import annotations

from array import array
from concurrent.futures import Future

from hpbroker.client.records import RecordMetadata
from hpbroker.protocol.errors import BrokerError, ErrorCode

#: a spill group holds at most this many messages (their futures complete together at worst)
GROUP_MAX = 1024

_UNRESOLVED = -2


class SpillGroup:
    """Consecutive spilled messages of one (topic, stored partition): one
    Future for all of them, resolved with the group once each member is
    answered; :meth:`outcome` gives a member's own result."""

    __slots__ = ("future", "topic", "seqs", "matched", "resolved", "closed", "parts", "offsets", "errors",
                 "whole", "left_error")

    def __init__(self, topic: str, whole: bool = False):
        self.future: Future = Future()
        self.topic = topic
        self.seqs = array("q")
        self.matched = 0  # members the read-ahead has found in the journal
        self.resolved = 0
        self.closed = False  # no new members; outcomes allocated
        self.parts: array | None = None
        self.offsets: array | None = None
        self.errors: dict[int, BaseException] | None = None
        self.whole = whole  # send_batch's: the first failure is everyone's
        self.left_error: BaseException | None = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            n = len(self.seqs)
            self.parts = array("i", [-1]) * n
            self.offsets = array("q", [_UNRESOLVED]) * n

    @property
    def complete(self) -> bool:
        return self.closed and self.resolved >= len(self.seqs)

    def outcome(self, i: int):
        """Member ``i``'s RecordMetadata, or the exception that failed it."""
        if self.whole and self.errors:
            return next(iter(self.errors.values()))
        off = self.offsets[i]
        if off != _UNRESOLVED:
            return RecordMetadata(self.topic, self.parts[i], off)
        if self.errors and i in self.errors:
            return self.errors[i]
        return self.left_error or BrokerError(ErrorCode.INTERNAL, "spilled message without an outcome")
