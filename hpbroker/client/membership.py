"""A group member's heartbeat thread (clustering consumption).

The thread owns its own ZeroMQ socket (a private :class:`Transport`) and
talks only to the group's coordinator: it joins, heartbeats every
``heartbeat_interval_ms`` the broker asks for, and leaves.  It never touches
the consumer's partitions.  What it learns - the partitions this member
should own now - it posts for the caller's thread, which applies it inside
``Consumer.poll`` (``on_revoke``, commit, stop fetching; then load offsets,
``on_assign``) and confirms with :meth:`Membership.confirm`; the next
heartbeat, sent at once, tells the coordinator what was released.  So
listeners always run on the caller's thread, as in kafka-python.

The member is **lost** (its partitions must be dropped without a commit) when
the coordinator no longer knows it (UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH),
when no heartbeat got through for ``session_timeout_ms`` (the broker has
removed it by then), or when the caller did not call ``poll`` within
``max_poll_interval_ms`` (then it leaves the group, as Kafka's consumer does,
and rejoins on the next ``poll``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid

from hpbroker.client.cluster import reachable
from hpbroker.client.transport import Transport
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.consumer")

TP = tuple[str, int]

#: replies after which the coordinator must be looked up again
_REDISCOVER = {ErrorCode.NOT_COORDINATOR, ErrorCode.NOT_LEADER, ErrorCode.REQUEST_TIMED_OUT,
               ErrorCode.BROKER_SHUTTING_DOWN, ErrorCode.BUSY}
_LOST = {ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_MEMBER_EPOCH}


def find_coordinator(t: Transport, group: str, timeout_ms: int | None = None) -> str:
    """The endpoint of ``group``'s coordinator (raises BrokerError)."""
    if not t.acceptors:
        t.metadata([], timeout_ms=timeout_ms)
    rep, _ = t.call(t.acceptors[0], m.FindCoordinator(id=t.next_id(), group=group), timeout_ms=timeout_ms)
    return reachable(rep.endpoint, t.bootstrap)


def _lists(tps) -> list[m.TopicPartitions]:
    by: dict[str, list[int]] = {}
    for t, p in sorted(tps):
        by.setdefault(t, []).append(p)
    return [m.TopicPartitions(t, ps) for t, ps in by.items()]


class Membership:
    def __init__(self, bootstrap, group: str, topics: list[str], *, session_timeout_ms: int = 10_000,
                 max_poll_interval_ms: int = 300_000, assignor: str = "", instance_id: str = "",
                 request_timeout_ms: int = 30_000, on_change=None, curve=None):
        """``on_change()``: called from the heartbeat thread when there is
        something for :meth:`take` (a new assignment, a loss, an error), so
        a caller blocked in ``poll`` wakes up for it."""
        self.bootstrap = bootstrap
        self.curve = curve  # the Consumer's CURVE options (hpbroker.sockets.Curve), or None
        self.group = group
        self.topics = list(topics)
        self.session_timeout_ms = session_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.assignor = assignor
        self.instance_id = instance_id
        self.request_timeout_ms = request_timeout_ms
        self.member_id = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._lock = threading.Lock()
        self.epoch = m.JOIN
        self.coordinator: str | None = None
        self.interval = 0.5
        self._target: frozenset[TP] | None = None  # the latest assignment told, not yet applied
        self._owned: frozenset[TP] = frozenset()  # what the caller's thread consumes now
        self._lost_reason = ""  # set: the caller must drop every partition, without a commit
        self._fatal: BrokerError | None = None
        self._left = False  # left for lack of poll(); rejoin on the next one
        self.last_poll = time.monotonic()
        self._last_ok = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hpbroker-heartbeat-{group}", daemon=True)
        self.heartbeats = 0
        self._on_change = on_change or (lambda: None)

    # -- the caller's thread --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def touch(self) -> None:
        """``poll`` was called: the member is making progress."""
        self.last_poll = time.monotonic()
        if self._left:
            with self._lock:
                self._left = False
                self.epoch = m.JOIN
            self._wake.set()

    def take(self) -> tuple[str, frozenset[TP] | None]:
        """(lost reason or "", the new assignment or None when unchanged)."""
        with self._lock:
            if self._fatal is not None:
                err, self._fatal = self._fatal, None
                raise err
            lost, self._lost_reason = self._lost_reason, ""
            target = self._target
            if target is not None and target == self._owned and not lost:
                self._target = target = None
            return lost, target

    def confirm(self, owned: frozenset[TP]) -> None:
        """The caller consumes exactly ``owned`` now; heartbeat it at once."""
        with self._lock:
            self._owned = owned
            if self._target == owned:
                self._target = None
        self._wake.set()

    def identity(self) -> tuple[str, int]:
        with self._lock:
            return self.member_id, self.epoch

    def close(self, leave: bool = True) -> None:
        """Stop heartbeating; ``leave``: tell the coordinator first, so the
        partitions move at once instead of after the session timeout."""
        self._leave_on_stop = leave
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.request_timeout_ms / 1000.0 + 1)

    # -- the heartbeat thread -----------------------------------------------------------

    def _run(self) -> None:
        t = Transport(self.bootstrap, request_timeout_ms=self.request_timeout_ms, curve=self.curve)
        try:
            while not self._stop.is_set():
                wait = self._beat(t)
                self._wake.wait(wait)
                self._wake.clear()
            if getattr(self, "_leave_on_stop", True) and self.epoch != m.JOIN and self.coordinator:
                try:
                    self._call(t, m.LEAVE, frozenset(), timeout_ms=min(2000, self.request_timeout_ms))
                except BrokerError:
                    pass  # the session expiry removes it instead
        finally:
            t.close()

    def _beat(self, t: Transport) -> float:
        """One heartbeat (or join, or leave for lack of poll); -> seconds until the next."""
        now = time.monotonic()
        if self._left:
            return 1.0
        if (now - self.last_poll) * 1000 > self.max_poll_interval_ms:
            self._leave_for_poll(t, now)
            return 1.0
        with self._lock:
            owned = self._owned | (self._target or frozenset())
        try:
            if self.coordinator is None:
                t.acceptors = []  # ask again which broker leads (a failover) and where its acceptors are
                self.coordinator = find_coordinator(t, self.group, timeout_ms=self._timeout())
            rep = self._call(t, self.epoch, owned)
        except BrokerError as e:
            return self._failed(e, now)
        self._last_ok = now
        self.heartbeats += 1
        self.interval = max(0.01, rep.heartbeat_interval_ms / 1000.0)
        target = frozenset((tp.topic, p) for tp in rep.assignment for p in tp.partitions)
        with self._lock:
            self.epoch = rep.member_epoch
            news = target != self._owned and target != self._target
            self._target = target if target != self._owned else None
        if news:
            self._on_change()
        return self.interval

    def _timeout(self) -> int:
        return min(self.request_timeout_ms, max(100, self.session_timeout_ms // 2))

    def _call(self, t: Transport, epoch: int, owned, timeout_ms: int | None = None) -> m.GroupHeartbeatReply:
        req = m.GroupHeartbeat(id=t.next_id(), group=self.group, member_id=self.member_id, member_epoch=epoch,
                               instance_id=self.instance_id, client_host=self.host, topics=self.topics,
                               assignor=self.assignor, session_timeout_ms=self.session_timeout_ms,
                               rebalance_timeout_ms=self.max_poll_interval_ms, owned=_lists(owned))
        rep, _ = t.call(self.coordinator, req, timeout_ms=timeout_ms or self._timeout())
        return rep

    def _failed(self, e: BrokerError, now: float) -> float:
        if e.code in _LOST:
            self._lose(f"the coordinator removed this member ({e})")
            return 0.0
        if e.code in _REDISCOVER:
            self.coordinator = None
            if (now - self._last_ok) * 1000 > self.session_timeout_ms and self.epoch != m.JOIN:
                self._lose(f"no heartbeat reached the coordinator for {now - self._last_ok:.1f} s "
                           f"(session_timeout_ms {self.session_timeout_ms}): {e}")
            return min(self.interval, 0.5)
        log.error("group %s: heartbeat refused: %s", self.group, e)
        with self._lock:
            self._fatal = e
        self._on_change()
        return 1.0

    def _lose(self, reason: str) -> None:
        log.warning("group %s: member %s lost its partitions: %s", self.group, self.member_id, reason)
        with self._lock:
            self._lost_reason = reason
            self._target = frozenset()
            self.epoch = m.JOIN
            # it comes back as a new member: anything still in flight under
            # the old id (a commit from before a pause) is refused as unknown
            self.member_id = uuid.uuid4().hex
        self._on_change()

    def _leave_for_poll(self, t: Transport, now: float) -> None:
        reason = (f"poll() was not called for {now - self.last_poll:.1f} s (max_poll_interval_ms "
                  f"{self.max_poll_interval_ms}): left the group; the next poll() rejoins")
        if self.coordinator and self.epoch != m.JOIN:
            try:
                self._call(t, m.LEAVE, frozenset())
            except BrokerError:
                pass
        self._lose(reason)
        self._left = True
