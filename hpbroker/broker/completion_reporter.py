"""The completion reporter: what the disk writer tells the processes that wait on it.

* Each push (one per acceptor, and on a replicated broker one more, last,
  to the replicator; push ``i`` answers the records of ring ``i``) gets one
  :class:`~hpbroker.ipc.completions.Completions` per report: its requests
  answered since the last one, and the watermarks of every log that changed.
* Reports nobody waits for - everything a slave's writer tells its own
  acceptors and replicator - are held and go out at most every
  ``report_every_s`` (``replication.writer_report_ms``) instead of after
  every flush; a report with a failed request goes at once.  A master's
  writer reports each flush to its acceptors at once, and to its replicator
  only in the full reports (it hears each flush from the round publisher's
  note, which waits for the same deadline: :meth:`hold_until_due`).
* A slave's writer reports each flush straight to the master's acceptors
  (:class:`~hpbroker.ipc.replica.SlaveAck`), where an ``ACK_TO`` ring
  record said (:meth:`report_to_master`), until it is promoted.

The sockets are passed in; a test hands it objects with ``send``.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from hpbroker.ipc import completions, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.sockets import try_send

from hpbroker.broker.pending_request import Answer


class _Unsent:
    """What one push has not been sent yet."""

    __slots__ = ("answers", "hwm", "log_start")

    def __init__(self):
        self.answers: list[Answer] = []
        self.hwm: dict[str, int] = {}
        self.log_start: dict[str, int] = {}

    def clear(self) -> None:
        self.answers = []
        self.hwm = {}
        self.log_start = {}


class CompletionReporter:
    """``pushes``: the sockets to the acceptors, then (``replicated``) the
    replicator's.  ``connect_master_acceptors(endpoints)`` returns PUSH
    sockets connected to a master's acceptors."""

    def __init__(self, writer: int, pushes: list, *, replicated: bool = False, report_every_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 connect_master_acceptors: Callable[[list[str]], list] | None = None):
        self._writer = writer
        self._pushes = pushes
        self._replicator_push = len(pushes) - 1 if replicated else -1
        self._report_every_s = report_every_s
        self._clock = clock
        self._connect_master_acceptors = connect_master_acceptors
        #: per push, the answers of requests finished since the last report;
        #: cleared in place, as requests keep their push's list
        self.answers: list[list[Answer]] = [[] for _ in pushes]
        self.changed_logs: set = set()  # logs whose watermarks moved since the last report
        self.due_at: float | None = None  # when held reports (and a waiting note) must go out
        self._unsent = [_Unsent() for _ in pushes]
        self.master_acceptors: list = []  # a slave's writer: PUSH sockets to the master's acceptors
        self._slave_id = 0
        self._master_epoch = -1

    def hold_until_due(self) -> None:
        """Something waits for the next due report: set its time, unless set."""
        if self.due_at is None:
            self.due_at = self._clock() + self._report_every_s

    def report(self, logs: Iterable | None = None, *, master: bool, send_held: bool = False) -> bool:
        """Send each push its answered requests and the changed watermarks,
        or hold them (see the module docstring).  ``logs`` given: a full
        report of those logs' watermarks, sent to every push.  ``master``:
        this writer publishes its rounds.  ``send_held``: hold nothing back
        (at exit).  True when held reports were due (so a waiting note is too)."""
        hwm, log_start = self._watermarks(self.changed_logs if logs is None else logs)
        self.changed_logs = set()
        full = logs is not None
        due = full or send_held or (self.due_at is not None and self._clock() >= self.due_at)
        hold = not due and self._replicator_push >= 0 and not master and self._report_every_s > 0
        for i, push in enumerate(self._pushes):
            unsent = self._unsent[i]
            answers = self.answers[i]
            if answers:
                unsent.answers += answers
                answers.clear()
            unsent.hwm.update(hwm)
            unsent.log_start.update(log_start)
            if hold and not any(answer[1] for answer in unsent.answers):
                if unsent.answers or unsent.hwm:
                    self.hold_until_due()
                continue
            if i == self._replicator_push and master and not unsent.answers and not full:
                unsent.clear()  # a master's replicator learns each flush from the publish note
                continue
            if unsent.answers or unsent.hwm or full:
                msg = completions.Completions(v=1, writer=self._writer, done=unsent.answers, hwm=unsent.hwm,
                                              log_start=unsent.log_start)
                push.send(completions.encoder.encode(msg), copy=False)
            unsent.clear()
        if due:
            self.due_at = None
        return due

    @staticmethod
    def _watermarks(logs) -> tuple[dict[str, int], dict[str, int]]:
        hwm, log_start = {}, {}
        for plog in logs:
            key = handoff.tp_key(*plog.key)
            hwm[key] = plog.high_watermark
            log_start[key] = plog.earliest_offset
        return hwm, log_start

    # -- a slave's writer: each flush straight to the master's acceptors ------------------

    def report_to_master(self, where: handoff.AckTo) -> None:
        """An ``ACK_TO`` record: report each flush to ``where.endpoints`` (none:
        stop) as slave ``where.slave_id`` of the master of ``where.epoch``."""
        for s in self.master_acceptors:
            s.close(0)
        connect = self._connect_master_acceptors
        self.master_acceptors = connect(where.endpoints) if where.endpoints and connect else []
        self._slave_id, self._master_epoch = where.slave_id, where.epoch

    def tell_master(self, results: dict, *, master: bool) -> None:
        """Tell the master's acceptors what this flush made durable: the same
        SlaveAck the replicator sends, minus two process hops.  ``master``:
        promoted, this log is a master's now, and no slave's report."""
        if not self.master_acceptors or not results:
            return
        if master:
            self.report_to_master(handoff.AckTo(epoch=-1, slave_id=0, endpoints=[]))
            return
        durable = {handoff.tp_key(*key): hwm for key, hwm in results.items() if isinstance(hwm, int)}
        if not durable:
            return
        ack = ipc_replica.SlaveAck(slave_id=self._slave_id, epoch=self._master_epoch, durable=durable)
        raw = ipc_replica.encoder.encode(ack)
        for s in self.master_acceptors:
            try_send(s, raw)  # dropped when that acceptor is unreachable; the replicator's SlaveAck still gets through
