"""The group coordinator's state machine: members, assignment, fencing.

Sans-IO: it takes requests and the time, and returns replies or raises
``BrokerError``; the acceptor (:mod:`hpbroker.net.groups`) does the I/O.
The shape is Kafka's KIP-848 consumer protocol with a broker-side assignor:

* a member joins, heartbeats and leaves with one request,
  ``GroupHeartbeat``, carrying the partitions it consumes now (``owned``);
* the coordinator keeps a **target** assignment (the assignor's output for
  the current members, subscriptions and partition counts) and moves each
  member towards it one heartbeat at a time: a partition the member holds
  but the target gives elsewhere is left out of the reply (the member
  revokes it: ``on_revoke``, commit, stop fetching) and is **still counted
  as the member's** until a heartbeat reports it released, or the member
  is removed; only then does its new owner get it.  So, as the broker sees
  it, no partition ever has two owners (``tests/test_group_coordinator.py``
  checks it over random schedules);
* members that miss ``session_timeout_ms`` of heartbeats, or hold a
  revoked partition longer than ``rebalance_timeout_ms``, are removed and
  everything they held is free at once;
* every change of what a member is told to own takes a new, higher epoch
  (the group's ``epoch`` counts them); a commit names the member and the
  epoch it holds, and is accepted only for partitions the member owns, at
  an epoch no older than the one that gave it each partition.

Member ids are chosen by the client (a UUID), so a join whose reply was
lost can be repeated without leaving a ghost member behind.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Mapping

from hpbroker.groups.assignors import ASSIGNORS, TP
from hpbroker.groups.offsets_log import Committed
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode


class Member:
    __slots__ = ("id", "instance_id", "client_host", "topics", "assignor", "session_timeout", "rebalance_timeout",
                 "epoch", "last_seen", "owned", "told", "revoke_deadlines")

    def __init__(self, member_id: str, now: float):
        self.id = member_id
        self.instance_id = ""
        self.client_host = ""
        self.topics: frozenset[str] = frozenset()
        self.assignor = ""
        self.session_timeout = 10.0
        self.rebalance_timeout = 300.0
        self.epoch = 0
        self.last_seen = now
        #: what the broker counts as this member's: partition -> the epoch that gave it
        self.owned: dict[TP, int] = {}
        #: what the last reply told it to own
        self.told: frozenset[TP] = frozenset()
        #: partition being revoked -> when it must be released by (each from when it was revoked)
        self.revoke_deadlines: dict[TP, float] = {}

    def revoking(self) -> set[TP]:
        return set(self.owned) - self.told


class Group:
    __slots__ = ("name", "epoch", "members", "target", "target_key", "assignor", "committed", "dirty", "counts_seen")

    def __init__(self, name: str):
        self.name = name
        self.epoch = 0
        self.members: dict[str, Member] = {}
        self.target: dict[str, set[TP]] = {}
        self.target_key: tuple | None = None
        self.dirty = True  # members or subscriptions changed since the target was computed
        self.counts_seen: tuple = ()  # (topic, partitions) of the subscribed topics then
        self.assignor = ""
        self.committed: dict[TP, Committed] = {}

    def owner_of(self) -> dict[TP, str]:
        return {tp: mem.id for mem in self.members.values() for tp in mem.owned}

    def state(self) -> str:
        if not self.members:
            return "empty"
        for mem in self.members.values():
            if set(mem.owned) != self.target.get(mem.id, set()):
                return "reconciling"
        return "stable"


def _tps(lists: Iterable[m.TopicPartitions]) -> set[TP]:
    return {(tp.topic, p) for tp in lists for p in tp.partitions}


def _lists(tps: Iterable[TP]) -> list[m.TopicPartitions]:
    by: dict[str, list[int]] = {}
    for t, p in sorted(tps):
        by.setdefault(t, []).append(p)
    return [m.TopicPartitions(t, ps) for t, ps in by.items()]


class GroupCoordinator:
    def __init__(self, *, heartbeat_interval_ms: int = 500, min_session_timeout_ms: int = 1000,
                 max_session_timeout_ms: int = 300_000, default_assignor: str = "sticky"):
        if default_assignor not in ASSIGNORS:
            raise ValueError(f"unknown assignor {default_assignor!r}; choose one of {', '.join(ASSIGNORS)}")
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.min_session_ms = min_session_timeout_ms
        self.max_session_ms = max_session_timeout_ms
        self.default_assignor = default_assignor
        self.groups: dict[str, Group] = {}
        self.rebalances = 0  # target recomputations that moved something (stats)
        self.moved_partitions = 0

    # -- membership ---------------------------------------------------------------------

    def heartbeat(self, req: m.GroupHeartbeat, counts: Mapping[str, int], now: float) -> m.GroupHeartbeatReply:
        """Join, heartbeat or leave; ``counts``: every topic's partition count."""
        if not req.member_id:
            raise BrokerError(ErrorCode.BAD_REQUEST, "member_id is required: a client-chosen unique id (a UUID)")
        if req.assignor and req.assignor not in ASSIGNORS:
            raise BrokerError(ErrorCode.BAD_REQUEST,
                              f"unknown assignor {req.assignor!r}; this broker has {', '.join(sorted(ASSIGNORS))}")
        g = self.groups.get(req.group)
        if req.member_epoch == m.LEAVE:
            if g is not None and req.member_id in g.members:
                self._remove(g, req.member_id, counts)
            return m.GroupHeartbeatReply(id=req.id, member_id=req.member_id, member_epoch=m.LEAVE)
        if not self.min_session_ms <= req.session_timeout_ms <= self.max_session_ms:
            raise BrokerError(ErrorCode.BAD_REQUEST,
                              f"session_timeout_ms {req.session_timeout_ms} is outside this broker's "
                              f"[{self.min_session_ms}, {self.max_session_ms}] (groups.min/max_session_timeout_ms)")
        mem = g.members.get(req.member_id) if g is not None else None
        if req.member_epoch == m.JOIN:
            if g is None:  # only a join creates a group: a refused heartbeat leaves nothing behind
                g = self.groups[req.group] = Group(req.group)
            if mem is not None:  # a repeated join: it holds nothing now
                mem.owned.clear()
                mem.told = frozenset()
            else:
                mem = g.members[req.member_id] = Member(req.member_id, now)
            g.dirty = True
        elif mem is None:
            raise BrokerError(ErrorCode.UNKNOWN_MEMBER_ID,
                              f"member {req.member_id} is not in group {req.group!r} (its session expired, it was "
                              "removed, or the broker restarted): rejoin")
        elif req.member_epoch > mem.epoch:
            raise BrokerError(ErrorCode.FENCED_MEMBER_EPOCH,
                              f"member epoch {req.member_epoch} is newer than the {mem.epoch} this coordinator gave")
        else:
            reported = _tps(req.owned)
            for tp in [tp for tp in mem.owned if tp not in reported]:
                del mem.owned[tp]  # released (or never received): free now
        mem.last_seen = now
        mem.instance_id, mem.client_host = req.instance_id, req.client_host
        topics = frozenset(req.topics)
        assignor = req.assignor or self.default_assignor
        if topics != mem.topics or assignor != mem.assignor:
            g.dirty = True
        mem.topics = topics
        mem.assignor = assignor
        mem.session_timeout = req.session_timeout_ms / 1000.0
        mem.rebalance_timeout = req.rebalance_timeout_ms / 1000.0
        self._retarget(g, counts)
        self._reconcile(g, mem, now)
        return m.GroupHeartbeatReply(id=req.id, member_id=mem.id, member_epoch=mem.epoch,
                                     heartbeat_interval_ms=self.heartbeat_interval_ms, assignment=_lists(mem.told))

    def expire(self, counts: Mapping[str, int], now: float) -> list[tuple[str, str, str]]:
        """Remove members past their session or rebalance timeout;
        -> (group, member, why) for each one removed."""
        out = []
        for g in list(self.groups.values()):
            for mem in list(g.members.values()):
                why = None
                if now - mem.last_seen > mem.session_timeout:
                    why = f"no heartbeat for {now - mem.last_seen:.1f} s (session_timeout_ms {mem.session_timeout * 1000:.0f})"
                elif late := [tp for tp in mem.revoking() if now > mem.revoke_deadlines.get(tp, now)]:
                    why = (f"did not release {len(late)} revoked partitions within rebalance_timeout_ms "
                           f"{mem.rebalance_timeout * 1000:.0f}")
                if why:
                    self._remove(g, mem.id, counts)
                    out.append((g.name, mem.id, why))
            if not g.members and not g.committed:
                del self.groups[g.name]
        return out

    def _remove(self, g: Group, member_id: str, counts: Mapping[str, int]) -> None:
        del g.members[member_id]
        g.target.pop(member_id, None)
        g.dirty = True
        self._retarget(g, counts)

    def _retarget(self, g: Group, counts: Mapping[str, int]) -> None:
        """Recompute the target when members, subscriptions or partition counts changed.
        A heartbeat that changes none of them costs one look at the counts."""
        if not g.dirty and tuple((t, counts.get(t, 0)) for t, _ in g.counts_seen) == g.counts_seen:
            return
        g.dirty = False
        topics = sorted({t for mem in g.members.values() for t in mem.topics})
        g.counts_seen = tuple((t, counts.get(t, 0)) for t in topics)
        key = (tuple(sorted((mem.id, mem.topics) for mem in g.members.values())),
               tuple((t, counts.get(t, 0)) for t in topics))
        if key == g.target_key:
            return
        g.target_key = key
        votes = Counter(mem.assignor for mem in g.members.values())
        g.assignor = max(votes, key=lambda a: (votes[a], a == self.default_assignor, a)) if votes else ""
        if not g.members:
            g.target = {}
            return
        subs = {mem.id: mem.topics for mem in g.members.values()}
        new = ASSIGNORS[g.assignor](subs, counts, g.target)
        before = {tp: mid for mid, tps in g.target.items() for tp in tps}
        moves = sum(1 for mid, tps in new.items() for tp in tps if before.get(tp, mid) != mid)
        if moves:
            self.rebalances += 1
            self.moved_partitions += moves
        g.target = new

    def _reconcile(self, g: Group, mem: Member, now: float) -> None:
        """Tell ``mem`` to own what it may: what it holds of its target,
        plus the target partitions nobody holds any more."""
        desired = g.target.get(mem.id, set())
        owners = g.owner_of()
        keep = {tp for tp in mem.owned if tp in desired}
        add = {tp for tp in desired if tp not in mem.owned and tp not in owners}
        told = frozenset(keep | add)
        if told != mem.told or add or mem.epoch == 0:  # a member that joined gets an epoch > 0 at once
            g.epoch += 1
            mem.epoch = g.epoch
            for tp in add:
                mem.owned[tp] = mem.epoch
            mem.told = told
        # each revoked partition's deadline runs from the reply that first
        # revoked it: a revoke told later (the group changed again) gets
        # its own full rebalance timeout, not what is left of an earlier one
        revoking = mem.revoking()
        deadlines = {tp: d for tp, d in mem.revoke_deadlines.items() if tp in revoking}
        for tp in revoking:
            deadlines.setdefault(tp, now + mem.rebalance_timeout)
        mem.revoke_deadlines = deadlines

    # -- commits ------------------------------------------------------------------------

    def check_commit(self, group: str, member_id: str, member_epoch: int, tps: Iterable[TP]) -> None:
        """Raise unless this member may commit these partitions now."""
        g = self.groups.get(group)
        if not member_id:
            if g is not None and g.members:
                raise BrokerError(ErrorCode.NON_EMPTY_GROUP,
                                  f"group {group!r} has {len(g.members)} live members: only they commit its offsets "
                                  "(stop them, or wait for their sessions to expire, before resetting offsets)")
            return
        mem = g.members.get(member_id) if g is not None else None
        if mem is None:
            raise BrokerError(ErrorCode.UNKNOWN_MEMBER_ID,
                              f"member {member_id} is not in group {group!r}: its partitions were given to others")
        if member_epoch > mem.epoch:
            raise BrokerError(ErrorCode.FENCED_MEMBER_EPOCH,
                              f"member epoch {member_epoch} is newer than the {mem.epoch} this coordinator gave")
        for tp in tps:
            since = mem.owned.get(tp)
            if since is None:
                raise BrokerError(ErrorCode.FENCED_MEMBER_EPOCH,
                                  f"{tp[0]}/{tp[1]} is not owned by member {member_id} of group {group!r} "
                                  "(it was revoked and may belong to another member now)")
            if member_epoch < since:
                raise BrokerError(ErrorCode.FENCED_MEMBER_EPOCH,
                                  f"{tp[0]}/{tp[1]} was given to member {member_id} at epoch {since}; "
                                  f"a commit at epoch {member_epoch} predates that")

    def apply(self, group: str, topic: str, partition: int, committed: Committed) -> None:
        """A commit record read back from ``__consumer_offsets``."""
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = Group(group)
        g.committed[(topic, partition)] = committed

    def committed(self, group: str, tps: set[TP] | None = None) -> list[m.OffsetEntry]:
        g = self.groups.get(group)
        if g is None:
            return []
        return [m.OffsetEntry(t, p, c.offset, c.metadata, c.timestamp_ms)
                for (t, p), c in sorted(g.committed.items()) if tps is None or (t, p) in tps]

    # -- admin --------------------------------------------------------------------------

    def list_groups(self) -> list[m.GroupListing]:
        return [m.GroupListing(g.name, g.state(), len(g.members)) for g in sorted(self.groups.values(), key=lambda g: g.name)]

    def describe(self, req: m.DescribeGroup, counts: Mapping[str, int], high_watermark: Callable[[str, int], int],
                 log_start: Callable[[str, int], int], now: float) -> m.DescribeGroupReply:
        g = self.groups.get(req.group)
        if g is None:
            raise BrokerError(ErrorCode.GROUP_ID_NOT_FOUND, f"no group {req.group!r}: no members and no committed offsets")
        members = [m.MemberDescription(mem.id, mem.instance_id, mem.client_host, mem.epoch, sorted(mem.topics),
                                       _lists(mem.owned), _lists(mem.revoking()), int((now - mem.last_seen) * 1000))
                   for mem in sorted(g.members.values(), key=lambda x: x.id)]
        owners = g.owner_of()
        tps = set(g.committed)
        for mem in g.members.values():
            tps.update((t, p) for t in mem.topics for p in range(counts.get(t, 0)))
        parts = []
        for t, p in sorted(tps):
            c = g.committed.get((t, p))
            hwm = high_watermark(t, p)
            base = c.offset if c is not None else log_start(t, p)
            parts.append(m.PartitionLag(t, p, c.offset if c is not None else -1, hwm, max(0, hwm - base),
                                        owners.get((t, p), "")))
        return m.DescribeGroupReply(id=req.id, group=g.name, state=g.state(), group_epoch=g.epoch, assignor=g.assignor,
                                    members=members, partitions=parts)
