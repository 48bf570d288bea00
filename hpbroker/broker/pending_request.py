"""Request tracking: one ring record's produce request, from its appends to its answer.

Each batch the disk writer appends holds a *ticket*: the callback the group
commit calls once the flush that covered the batch returned, with the error
that failed it or with the batch's offsets.  A request is answered once its
record has been appended (or refused) and every ticket has resolved.  The
answer is one ``Completions.done`` entry, ``(token, code, message,
base_offsets, last_offset)``: code 0 when every batch is durable, otherwise
the code of the first error (:func:`error_code`) and no offsets.

Pure logic: no sockets, no files, no clock.  Called on the writer's loop
thread only (the group commit delivers tickets there).
"""

from __future__ import annotations

from typing import Callable

from hpbroker.io import StorageError
from hpbroker.io.producer_state import SequenceError
from hpbroker.protocol.errors import ErrorCode

Answer = tuple[int, int, str, list[int], int]
Ticket = Callable[[BaseException | None, int, int], None]


class ReplicaGap(ValueError):
    """A replicated batch that does not start at the replica's log end."""


def error_code(e: BaseException) -> int:
    """The code a request that ``e`` failed is answered with."""
    if isinstance(e, StorageError):
        return int(ErrorCode.PARTITION_FENCED)
    if isinstance(e, SequenceError):
        return e.code
    if isinstance(e, ReplicaGap):
        return int(ErrorCode.OFFSET_OUT_OF_RANGE)
    return int(ErrorCode.INTERNAL)


class PendingRequest:
    """One ring record's request, until it has been answered.

    Its answer is appended, once, to ``answers`` (the reporter's list for
    the ring the record came from)."""

    __slots__ = ("token", "base_offsets", "last_offset", "open_tickets", "appending", "error", "answers")

    def __init__(self, token: int, batch_count: int, answers: list[Answer]):
        self.token = token
        self.base_offsets = [-1] * batch_count
        self.last_offset = -1
        self.open_tickets = 0
        self.appending = True  # until appended(): more tickets may come
        self.error: tuple[int, str] | None = None  # (code, message) of the first failure
        self.answers = answers

    def ticket(self, i: int) -> Ticket:
        """The group-commit callback of batch ``i``; the request waits for it
        from now on.  If the append it is handed to raises, call
        :meth:`drop_ticket`: an unregistered ticket never resolves."""
        self.open_tickets += 1

        def resolved(err: BaseException | None, base: int, last: int) -> None:
            self.open_tickets -= 1
            if err is not None:
                if self.error is None:
                    self.error = (error_code(err), str(err))
            else:
                self.base_offsets[i] = base
                if last > self.last_offset:
                    self.last_offset = last
            if self.open_tickets == 0 and not self.appending:
                self._answer()

        return resolved

    def drop_ticket(self) -> None:
        """The append the last ticket was made for raised: stop waiting for it."""
        self.open_tickets -= 1

    def fail(self, code: int, message: str) -> None:
        """Fail the request (the first failure decides its code)."""
        if self.error is None:
            self.error = (code, message)

    def appended(self) -> None:
        """The record is done with (every batch appended, or the rest
        refused): answer as soon as the open tickets have resolved."""
        self.appending = False
        if self.open_tickets == 0:
            self._answer()

    def _answer(self) -> None:
        if self.error is None:
            self.answers.append((self.token, 0, "", self.base_offsets, self.last_offset))
        else:
            self.answers.append((self.token, self.error[0], self.error[1], [], -1))
