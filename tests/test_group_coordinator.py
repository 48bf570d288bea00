"""The group coordinator's state machine (hpbroker/groups/coordinator.py),
driven directly: requests in, replies or BrokerError out, and the time is a
float the test advances.  No process, no socket.

The property everything else rests on: as the coordinator counts it, no
partition ever has two owners, whatever members do (join, heartbeat, lose
replies, send stale heartbeats, hold on to revoked partitions, leave, go
silent) and whenever time runs out on them; and once the members that are
left heartbeat honestly, the group settles with every partition owned.
"""

from __future__ import annotations

import random

import pytest

from hpbroker.groups.assignors import ASSIGNORS
from hpbroker.groups.coordinator import GroupCoordinator
from hpbroker.groups.offsets_log import Committed
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode

G = "orders"


def tps_of(lists) -> set:
    return {(tp.topic, p) for tp in lists for p in tp.partitions}


def lists_of(tps) -> list[m.TopicPartitions]:
    by: dict[str, list[int]] = {}
    for t, p in sorted(tps):
        by.setdefault(t, []).append(p)
    return [m.TopicPartitions(t, ps) for t, ps in by.items()]


def all_of(topic: str, n: int) -> set:
    return {(topic, p) for p in range(n)}


class Member:
    """A well-behaved member, as the client's membership thread is: it
    reports what it was last told, and keeps its epoch."""

    def __init__(self, c: GroupCoordinator, member_id: str, topics=("t",), group: str = G, **kw):
        self.c, self.id, self.topics, self.group, self.kw = c, member_id, list(topics), group, kw
        self.epoch = m.JOIN
        self.owned: set = set()

    def request(self, epoch=None, owned=None, **kw) -> m.GroupHeartbeat:
        fields = dict(id=1, group=self.group, member_id=self.id, member_epoch=self.epoch if epoch is None else epoch,
                      topics=self.topics, owned=lists_of(self.owned if owned is None else owned))
        fields.update(self.kw)
        fields.update(kw)
        return m.GroupHeartbeat(**fields)

    def beat(self, counts, now, **kw) -> set:
        """One heartbeat; adopts the reply; -> the assignment."""
        rep = self.c.heartbeat(self.request(**kw), counts, now)
        assert rep.code == 0 and rep.member_id == self.id
        self.epoch = rep.member_epoch
        self.owned = tps_of(rep.assignment)
        return self.owned

    def leave(self, counts, now) -> m.GroupHeartbeatReply:
        rep = self.c.heartbeat(self.request(epoch=m.LEAVE, owned=set()), counts, now)
        self.epoch, self.owned = m.JOIN, set()
        return rep


def refused(code: ErrorCode, fn, *args, **kw) -> BrokerError:
    with pytest.raises(BrokerError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value
    return e.value


def owners(c: GroupCoordinator, group: str = G) -> dict:
    """(topic, partition) -> member, failing on a partition with two owners."""
    out: dict = {}
    g = c.groups.get(group)
    for mem in (g.members.values() if g else ()):
        for tp in mem.owned:
            assert tp not in out, f"{tp} owned by both {out[tp]} and {mem.id}"
            out[tp] = mem.id
    return out


def state(c: GroupCoordinator, group: str = G) -> str:
    return c.groups[group].state()


def describe(c: GroupCoordinator, counts, now: float, group: str = G) -> m.DescribeGroupReply:
    return c.describe(m.DescribeGroup(id=1, group=group), counts, lambda t, p: 100, lambda t, p: 0, now)


COUNTS = {"t": 4}


# -- joining, moving, leaving --------------------------------------------------------


def test_a_member_alone_gets_an_epoch_and_the_whole_topic():
    c = GroupCoordinator()
    a = Member(c, "a")
    rep = c.heartbeat(a.request(), COUNTS, 0.0)
    assert rep.member_epoch > 0 and rep.member_id == "a"
    assert tps_of(rep.assignment) == all_of("t", 4)
    assert rep.heartbeat_interval_ms == c.heartbeat_interval_ms
    assert state(c) == "stable" and owners(c) == {tp: "a" for tp in all_of("t", 4)}


def test_a_second_member_gets_half_only_after_the_first_released_it():
    c = GroupCoordinator()
    a, b = Member(c, "a"), Member(c, "b")
    assert a.beat(COUNTS, 0.0) == all_of("t", 4)
    e_a = a.epoch
    # b joins: it is given nothing yet, since a holds everything
    assert b.beat(COUNTS, 0.1) == set() and b.epoch > e_a
    assert state(c) == "reconciling"
    # a's next heartbeat takes half away from it (a new epoch) ...
    kept = a.beat(COUNTS, 0.2, owned=all_of("t", 4))
    assert len(kept) == 2 and a.epoch > b.epoch
    revoked = all_of("t", 4) - kept
    # ... but the broker still counts the revoked half as a's until a says it let go
    assert owners(c) == {tp: "a" for tp in all_of("t", 4)}
    assert b.beat(COUNTS, 0.3) == set()
    d = describe(c, COUNTS, 0.3)
    assert tps_of(next(x for x in d.members if x.member_id == "a").revoking) == revoked
    # a releases (reports only what it was told); b gets the half on its next heartbeat
    assert a.beat(COUNTS, 0.4) == kept
    assert owners(c) == {tp: "a" for tp in kept}
    assert b.beat(COUNTS, 0.5) == revoked
    assert state(c) == "stable"
    assert owners(c) == {**{tp: "a" for tp in kept}, **{tp: "b" for tp in revoked}}


def test_a_leave_frees_the_partitions_at_once():
    c = GroupCoordinator()
    a, b = settled(c, "a", "b")
    rep = b.leave(COUNTS, 1.0)
    assert rep.member_epoch == m.LEAVE and rep.member_id == "b"
    assert "b" not in c.groups[G].members
    assert c.groups[G].target == {"a": all_of("t", 4)} and state(c) == "reconciling"
    assert a.beat(COUNTS, 1.1) == all_of("t", 4)  # the very next heartbeat
    assert state(c) == "stable"
    # leaving twice, or leaving a group that does not exist, is not an error
    assert b.leave(COUNTS, 1.2).member_epoch == m.LEAVE
    assert c.heartbeat(m.GroupHeartbeat(id=1, group="nosuch", member_id="z", member_epoch=m.LEAVE), COUNTS, 1.3).code == 0
    assert "nosuch" not in c.groups


def settled(c: GroupCoordinator, *ids, counts=COUNTS, now: float = 0.0, **kw) -> list[Member]:
    """Members that joined and heartbeat until the group is stable."""
    members = [Member(c, mid, **kw) for mid in ids]
    for _ in range(4):
        for mem in members:
            mem.beat(counts, now)
    assert state(c, members[0].group) == "stable"
    return members


def test_session_expiry_frees_the_partitions():
    c = GroupCoordinator()
    a, b = settled(c, "a", "b", session_timeout_ms=3000)
    held_by_b = set(b.owned)
    assert c.expire(COUNTS, 2.9) == []  # within the session: nobody goes
    a.beat(COUNTS, 2.9)
    assert c.expire(COUNTS, 3.0) == []  # exactly the session timeout: not past it
    gone = c.expire(COUNTS, 3.01)
    assert [(g, mid) for g, mid, _ in gone] == [(G, "b")] and "no heartbeat" in gone[0][2]
    assert "b" not in c.groups[G].members and set(owners(c).values()) == {"a"}
    assert a.beat(COUNTS, 3.1) == all_of("t", 4) and held_by_b <= a.owned


def test_a_member_that_never_releases_a_revoked_partition_is_removed_after_the_rebalance_timeout():
    c = GroupCoordinator()
    a = Member(c, "a", rebalance_timeout_ms=5000)
    b = Member(c, "b")
    a.beat(COUNTS, 0.0)
    b.beat(COUNTS, 0.0)
    told = a.beat(COUNTS, 1.0, owned=all_of("t", 4))  # revoke starts at 1.0
    assert len(told) == 2
    # a keeps heartbeating (its session is fine) but keeps reporting all four
    for now in (2.0, 4.0, 5.9):
        a.beat(COUNTS, now, owned=all_of("t", 4))
        b.beat(COUNTS, now)
        assert c.expire(COUNTS, now) == [] and b.owned == set()
    a.beat(COUNTS, 6.0, owned=all_of("t", 4))
    gone = c.expire(COUNTS, 6.01)
    assert [mid for _, mid, _ in gone] == ["a"] and "did not release" in gone[0][2]
    assert b.beat(COUNTS, 6.1) == all_of("t", 4)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, a.beat, COUNTS, 6.2)


def test_a_release_within_the_rebalance_timeout_clears_the_deadline():
    c = GroupCoordinator()
    a = Member(c, "a", rebalance_timeout_ms=5000)
    b = Member(c, "b")
    a.beat(COUNTS, 0.0)
    b.beat(COUNTS, 0.0)
    a.beat(COUNTS, 1.0, owned=all_of("t", 4))
    a.beat(COUNTS, 5.0)  # released in time
    b.beat(COUNTS, 5.0)
    assert state(c) == "stable"
    for now in (7.0, 9.0, 11.0):  # long after the first deadline, heartbeating normally
        a.beat(COUNTS, now)
        b.beat(COUNTS, now)
        assert c.expire(COUNTS, now) == []


def test_the_rebalance_timeout_runs_from_when_each_partition_was_revoked():
    """A member that releases what it was told, but is told to give up
    another partition in the same reply (the group changed again), has the
    full rebalance timeout for the new one: the clock of the first revoke
    does not carry over to partitions revoked later."""
    c = GroupCoordinator()
    six = {"t": 6}
    a = Member(c, "a", rebalance_timeout_ms=5000)
    a.beat(six, 0.0)
    Member(c, "b").beat(six, 0.5)
    assert len(a.beat(six, 1.0, owned=all_of("t", 6))) == 3  # 3 revoked at 1.0: due by 6.0
    Member(c, "c").beat(six, 4.5)  # the target changes again
    first = a.owned
    second = a.beat(six, 5.0)  # releases the 3 in time, and is told to give up one more
    assert len(second) == 2 and second < first
    assert c.expire(six, 6.5) == []  # the new revoke started at 5.0: due by 10.0
    a.beat(six, 9.5, owned=first)  # still holding it (with a live session)
    assert c.expire(six, 9.9) == []
    gone = c.expire(six, 10.01)
    assert [mid for _, mid, _ in gone] == ["a"]


# -- errors and fencing ---------------------------------------------------------------


def test_unknown_member_after_removal():
    c = GroupCoordinator()
    a, b = settled(c, "a", "b")
    b.leave(COUNTS, 1.0)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, c.heartbeat, b.request(epoch=5), COUNTS, 1.1)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, c.check_commit, G, "b", 5, [("t", 0)])
    # a member id never seen, in a group that exists and in one that does not
    refused(ErrorCode.UNKNOWN_MEMBER_ID, c.heartbeat, Member(c, "zz").request(epoch=1), COUNTS, 1.2)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, c.check_commit, "nosuch", "zz", 1, [("t", 0)])
    # rejoining works, with an epoch above every one given before
    top = c.groups[G].epoch
    b.beat(COUNTS, 1.3)
    assert b.epoch > top


def test_a_refused_heartbeat_creates_no_group():
    """A member of a group this coordinator does not know (it restarted)
    is told UNKNOWN_MEMBER_ID, and that leaves nothing behind: no empty
    group in ListGroups, DescribeGroup still GROUP_ID_NOT_FOUND."""
    c = GroupCoordinator()
    stray = Member(c, "a", group="ghost")
    refused(ErrorCode.UNKNOWN_MEMBER_ID, c.heartbeat, stray.request(epoch=7), COUNTS, 0.0)
    refused(ErrorCode.BAD_REQUEST, c.heartbeat, stray.request(session_timeout_ms=1), COUNTS, 0.0)
    assert c.list_groups() == [] and "ghost" not in c.groups
    refused(ErrorCode.GROUP_ID_NOT_FOUND, describe, c, COUNTS, 0.0, "ghost")
    assert stray.beat(COUNTS, 0.1) == all_of("t", 4)  # the rejoin
    assert c.list_groups() == [m.GroupListing("ghost", "stable", 1)]


def test_a_heartbeat_with_an_epoch_newer_than_given_is_fenced():
    c = GroupCoordinator()
    a, b = settled(c, "a", "b")
    b.leave(COUNTS, 0.5)
    a.beat(COUNTS, 0.6)
    assert a.epoch > 1
    e = refused(ErrorCode.FENCED_MEMBER_EPOCH, c.heartbeat, a.request(epoch=a.epoch + 1), COUNTS, 1.0)
    assert str(a.epoch + 1) in e.message
    refused(ErrorCode.FENCED_MEMBER_EPOCH, c.check_commit, G, "a", a.epoch + 1, [("t", 0)])
    # an older epoch is a lost reply, not a fence
    assert a.beat(COUNTS, 1.1, epoch=a.epoch - 1) == all_of("t", 4)


def test_commit_fencing_by_ownership_and_by_the_epoch_that_gave_the_partition():
    c = GroupCoordinator()
    a, b = Member(c, "a"), Member(c, "b")
    a.beat(COUNTS, 0.0)
    b.beat(COUNTS, 0.0)
    a.beat(COUNTS, 0.1, owned=all_of("t", 4))  # told to give half up
    revoked = all_of("t", 4) - a.owned
    # a may still commit the revoked half until it reports releasing it (its on_revoke commit)
    c.check_commit(G, "a", a.epoch, sorted(all_of("t", 4)))
    a.beat(COUNTS, 0.2)  # released
    e = refused(ErrorCode.FENCED_MEMBER_EPOCH, c.check_commit, G, "a", a.epoch, sorted(revoked))
    assert "not owned" in e.message
    old_b = b.epoch
    b.beat(COUNTS, 0.3)  # b gets the half, at a new epoch
    assert b.owned == revoked and b.epoch > old_b
    given_at = b.epoch
    c.check_commit(G, "b", given_at, sorted(revoked))
    # b's commit at the epoch it had before it was given them predates the grant
    e = refused(ErrorCode.FENCED_MEMBER_EPOCH, c.check_commit, G, "b", old_b, [sorted(revoked)[0]])
    assert str(given_at) in e.message
    # a partition owned since an old epoch may be committed at any epoch since
    a.leave(COUNTS, 0.4)
    b.beat(COUNTS, 0.5)
    assert b.owned == all_of("t", 4) and b.epoch > given_at
    c.check_commit(G, "b", given_at, sorted(revoked))
    refused(ErrorCode.FENCED_MEMBER_EPOCH, c.check_commit, G, "b", given_at, sorted(all_of("t", 4)))
    c.check_commit(G, "b", b.epoch, sorted(all_of("t", 4)))


def test_an_admin_commit_is_refused_while_the_group_has_members():
    c = GroupCoordinator()
    c.check_commit("fresh", "", -1, [("t", 0)])  # no group at all: allowed
    (a,) = settled(c, "a")
    e = refused(ErrorCode.NON_EMPTY_GROUP, c.check_commit, G, "", -1, [("t", 0)])
    assert "1 live members" in e.message
    a.leave(COUNTS, 1.0)
    c.check_commit(G, "", -1, [("t", 0)])  # empty now
    # after an expiry too
    (b,) = settled(c, "b", now=2.0)
    refused(ErrorCode.NON_EMPTY_GROUP, c.check_commit, G, "", -1, [])
    c.expire(COUNTS, 100.0)
    c.check_commit(G, "", -1, [("t", 0)])


def test_a_repeated_join_leaves_no_ghost_ownership():
    c = GroupCoordinator()
    a, b = Member(c, "a"), Member(c, "b")
    a.beat(COUNTS, 0.0)
    b.beat(COUNTS, 0.0)
    assert b.owned == set()
    # a joins again (it restarted, or lost its member epoch): it holds nothing
    # now, so nothing of its old ownership may keep b waiting
    a.epoch, a.owned = m.JOIN, set()
    got = a.beat(COUNTS, 0.1)
    assert len(got) == 2 and len(c.groups[G].members) == 2
    assert owners(c) == {tp: "a" for tp in got}
    assert b.beat(COUNTS, 0.2) == all_of("t", 4) - got
    assert state(c) == "stable"
    # a join whose reply was lost, repeated: one member, no revoking left behind
    d = Member(c, "d", group="solo")
    c.heartbeat(d.request(), COUNTS, 0.3)  # reply lost
    assert d.beat(COUNTS, 0.4) == all_of("t", 4)
    assert list(c.groups["solo"].members) == ["d"] and state(c, "solo") == "stable"
    assert all(not x.revoking for x in describe(c, COUNTS, 0.5, "solo").members)


def test_partition_count_growth_reaches_the_members():
    c = GroupCoordinator()
    a, b = settled(c, "a", "b")
    grown = {"t": 7}
    for _ in range(3):
        a.beat(grown, 1.0)
        b.beat(grown, 1.0)
    assert state(c) == "stable"
    assert a.owned | b.owned == all_of("t", 7) and not a.owned & b.owned
    assert sorted([len(a.owned), len(b.owned)]) == [3, 4]
    # a topic created after the subscription
    late = Member(c, "x", topics=("later",), group="g2")
    assert late.beat(grown, 2.0) == set()
    assert late.beat({**grown, "later": 2}, 2.1) == all_of("later", 2)


def test_bad_requests():
    c = GroupCoordinator(min_session_timeout_ms=1000, max_session_timeout_ms=60_000)
    a = Member(c, "a")
    for ms in (999, 60_001):
        e = refused(ErrorCode.BAD_REQUEST, c.heartbeat, a.request(session_timeout_ms=ms), COUNTS, 0.0)
        assert str(ms) in e.message
    e = refused(ErrorCode.BAD_REQUEST, c.heartbeat, a.request(assignor="cooperative"), COUNTS, 0.0)
    assert "cooperative" in e.message
    refused(ErrorCode.BAD_REQUEST, c.heartbeat, Member(c, "").request(), COUNTS, 0.0)
    assert G not in c.groups  # nothing was created by a refused join
    for ms in (1000, 60_000):  # the bounds themselves are fine
        assert c.heartbeat(a.request(session_timeout_ms=ms), COUNTS, 0.0).code == 0
    with pytest.raises(ValueError):
        GroupCoordinator(default_assignor="cooperative")


@pytest.mark.parametrize("votes, expected", [
    (["range", "range", "roundrobin"], "range"),
    (["roundrobin", "", "roundrobin"], "roundrobin"),  # "" counts as the default (sticky)
    (["", "", "range"], "sticky"),
    (["range", "roundrobin"], "roundrobin"),  # a tie without the default: the larger name (deterministic)
    (["range", ""], "sticky"),  # a tie with the default: the default
])
def test_the_group_uses_the_assignor_most_members_name(votes, expected):
    c = GroupCoordinator(default_assignor="sticky")
    members = [Member(c, f"m{i}", assignor=a) for i, a in enumerate(votes)]
    for _ in range(3):
        for mem in members:
            mem.beat({"t": 12}, 0.0)
    d = describe(c, {"t": 12}, 0.0)
    assert d.assignor == expected and d.state == "stable"
    assert {mem.id: mem.owned for mem in members} == c.groups[G].target
    if expected != "sticky":  # sticky's answer depends on the targets before; the others' do not
        subs = {mem.id: frozenset({"t"}) for mem in members}
        assert c.groups[G].target == ASSIGNORS[expected](subs, {"t": 12}, {})


def test_describe_and_list_groups():
    c = GroupCoordinator()
    a, b = settled(c, "a", "b", instance_id="host-1", client_host="10.0.0.1")
    c.apply(G, "t", 1, Committed(40, "meta", 123))
    c.apply(G, "old", 0, Committed(5, "", 99))  # a topic nobody subscribes to any more
    d = c.describe(m.DescribeGroup(id=9, group=G), COUNTS, lambda t, p: 100, lambda t, p: 10, 2.5)
    assert (d.id, d.group, d.state, d.assignor) == (9, G, "stable", "sticky")
    assert [(x.member_id, x.instance_id, x.client_host, x.topics) for x in d.members] == \
        [("a", "host-1", "10.0.0.1", ["t"]), ("b", "host-1", "10.0.0.1", ["t"])]
    assert d.members[0].last_heartbeat_ms_ago == 2500
    lag = {(x.topic, x.partition): (x.committed, x.lag, x.owner) for x in d.partitions}
    assert lag[("t", 1)][:2] == (40, 60) and lag[("t", 0)][:2] == (-1, 90)  # never committed: from the log start
    assert lag[("old", 0)] == (5, 95, "")
    assert {lag[("t", p)][2] for p in range(4)} == {"a", "b"}
    assert c.committed(G, {("t", 1)}) == [m.OffsetEntry("t", 1, 40, "meta", 123)]
    assert [x.group for x in c.list_groups()] == [G]
    refused(ErrorCode.GROUP_ID_NOT_FOUND, describe, c, COUNTS, 0.0, "nosuch")
    # a group with offsets only: listed as empty, and it survives expiry
    a.leave(COUNTS, 3.0)
    b.leave(COUNTS, 3.0)
    assert c.expire(COUNTS, 1000.0) == []
    assert c.list_groups() == [m.GroupListing(G, "empty", 0)]
    # a group with neither members nor offsets goes at the next expiry
    (z,) = settled(c, "z", group="gone", now=1000.0)
    z.leave(COUNTS, 1001.0)
    c.expire(COUNTS, 1001.0)
    assert "gone" not in c.groups


# -- the invariant, over random schedules ------------------------------------------------


class Sim:
    """A member as the random schedule drives it.

    ``held``: what it really consumes (it applies a reply at once, or, when
    slow, takes new partitions at once but lets revoked ones go only at a
    later heartbeat).  ``epoch`` and ``held`` are what an honest heartbeat
    reports; ``history`` keeps old (epoch, held) pairs for stale ones."""

    def __init__(self, member_id: str, topics, assignor: str, session_ms: int, rebalance_ms: int):
        self.id = member_id
        self.topics = sorted(topics)
        self.assignor = assignor
        self.session_ms = session_ms
        self.rebalance_ms = rebalance_ms
        self.epoch = m.JOIN
        self.held: frozenset = frozenset()
        self.alive = True  # heartbeats; False: went silent (a zombie until it notices)
        self.history: list[tuple[int, frozenset]] = []

    def request(self, epoch=None, held=None) -> m.GroupHeartbeat:
        return m.GroupHeartbeat(id=1, group=G, member_id=self.id, member_epoch=self.epoch if epoch is None else epoch,
                                topics=self.topics, assignor=self.assignor, session_timeout_ms=self.session_ms,
                                rebalance_timeout_ms=self.rebalance_ms,
                                owned=lists_of(self.held if held is None else held))


class Schedule:
    def __init__(self, seed: int, stale: bool, max_members: int = 7):
        self.rng = random.Random(seed)
        self.c = GroupCoordinator(heartbeat_interval_ms=500, min_session_timeout_ms=1000)
        self.stale = stale
        self.max_members = max_members
        self.counts = {"t": 6, "s": 3}
        self.now = 0.0
        self.sims: dict[str, Sim] = {}
        self.serial = 0
        self.expired = 0
        self.fenced_zombie_commits = 0

    # -- what members do --

    def join(self) -> None:
        self.serial += 1
        topics = self.rng.choice([("t",), ("t",), ("t", "s"), ("s",)])
        sim = Sim(f"m{self.serial:04d}", topics, self.rng.choice(["", "", "sticky", "range", "roundrobin"]),
                  self.rng.choice([2000, 3000, 5000]), self.rng.choice([3000, 8000]))
        self.sims[sim.id] = sim
        self.heartbeat(sim)

    def heartbeat(self, sim: Sim, mode: str | None = None) -> None:
        mode = mode or self.rng.choices(["honest", "lost", "slow", "stale"], [6, 2, 2, 2 if self.stale else 0])[0]
        if mode == "stale" and sim.history:
            epoch, held = self.rng.choice(sim.history)  # a delayed duplicate of an old heartbeat
            try:
                self.c.heartbeat(sim.request(epoch, held), self.counts, self.now)
            except BrokerError as e:
                # from an earlier membership of this member: after a group
                # with no members and no offsets is dropped, epochs start over
                assert e.code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_MEMBER_EPOCH), e
            return
        try:
            rep = self.c.heartbeat(sim.request(), self.counts, self.now)
        except BrokerError as e:
            # removed behind its back: it drops everything and rejoins.  Fenced
            # only when a stale duplicate of its join made it a member again
            # after its group had been dropped, with epochs started over.
            assert e.code == ErrorCode.UNKNOWN_MEMBER_ID or (self.stale and e.code == ErrorCode.FENCED_MEMBER_EPOCH), e
            sim.epoch, sim.held = m.JOIN, frozenset()
            return
        if mode == "lost":
            return
        told = frozenset(tps_of(rep.assignment))
        sim.history = (sim.history + [(sim.epoch, sim.held)])[-5:]
        sim.epoch = rep.member_epoch
        sim.held = (sim.held | told) if mode == "slow" else told

    def commit(self, sim: Sim) -> None:
        """A member commits what it consumes: accepted iff the coordinator
        counts it a member; a zombie's commit is refused."""
        if not sim.held:
            return
        member = sim.id in self.c.groups.get(G, _NoGroup).members
        try:
            self.c.check_commit(G, sim.id, sim.epoch, sorted(sim.held))
        except BrokerError as e:
            assert not member or self.stale, f"{sim.id} refused a commit of what it holds: {e}"
            assert e.code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_MEMBER_EPOCH), e
            self.fenced_zombie_commits += not member
            return
        assert member, f"{sim.id} is not a member, yet its commit was accepted"

    def step(self) -> None:
        r = self.rng.random()
        live = [s for s in self.sims.values() if s.alive]
        if r < 0.08 and len(self.sims) < self.max_members:
            self.join()
        elif r < 0.70 and live:
            self.heartbeat(self.rng.choice(live))
        elif r < 0.74 and live:
            sim = self.rng.choice(live)
            self.c.heartbeat(sim.request(m.LEAVE, frozenset()), self.counts, self.now)
            del self.sims[sim.id]
        elif r < 0.77 and live:
            self.rng.choice(live).alive = False
        elif r < 0.80:
            zombies = [s for s in self.sims.values() if not s.alive]
            if zombies:
                self.rng.choice(zombies).alive = True
        elif r < 0.85 and self.sims:
            self.commit(self.rng.choice(list(self.sims.values())))
        elif r < 0.853:
            t = self.rng.choice(["t", "s"])
            if self.counts[t] < 24:
                self.counts[t] += self.rng.randint(1, 3)
        else:
            self.now += self.rng.choice([0.1, 0.5, 1.0, 2.5])
            self.expired += len(self.c.expire(self.counts, self.now))

    # -- what must hold --

    def check(self) -> None:
        held = owners(self.c)  # fails on two owners
        g = self.c.groups.get(G)
        if g is None:
            return
        for mem in g.members.values():
            assert mem.told <= set(mem.owned), "told to own what the coordinator does not count as owned"
            for tp, since in mem.owned.items():
                assert 0 < since <= mem.epoch <= g.epoch
        if not self.stale:
            # what live members really consume is theirs as the coordinator sees it
            for sim in self.sims.values():
                if sim.id in g.members:
                    assert sim.held <= set(g.members[sim.id].owned), (sim.id, sim.held, held)

    def converge(self, max_rounds: int = 3) -> int:
        """The silent members are expired, and everyone left heartbeats
        honestly: the group must be stable with every partition owned within
        ``max_rounds`` rounds after the last membership change."""
        for sim in self.sims.values():
            sim.alive = sim.alive or self.rng.random() < 0.2
        live = [sim for sim in self.sims.values() if sim.alive]
        self.now += 6.0  # longer than any session
        for sim in live:
            self.heartbeat(sim, "honest")
        # the silent ones go, and so does a slow one whose revoke took too long
        self.c.expire(self.counts, self.now + 0.01)
        self.sims = {sim.id: sim for sim in live}
        for sim in live:  # one that was removed learns it now, and rejoins
            self.heartbeat(sim, "honest")
            if sim.epoch == m.JOIN:
                self.heartbeat(sim, "honest")
        self.check()
        g = self.c.groups.get(G)
        if g is None or not g.members:
            return 0
        assert set(g.members) == set(self.sims)
        for rounds in range(1, max_rounds + 1):
            self.now += 0.5
            assert self.c.expire(self.counts, self.now) == []
            for sim in self.sims.values():
                self.heartbeat(sim, "honest")
                self.check()
            want = {(t, p) for sim in self.sims.values() for t in sim.topics for p in range(self.counts[t])}
            if g.state() == "stable" and set(owners(self.c)) == want:
                return rounds
        raise AssertionError(f"not stable after {max_rounds} honest rounds: {g.state()}, "
                             f"owned {sorted(owners(self.c).items())}, target {g.target}")


class _NoGroup:
    members: dict = {}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("stale", [False, True], ids=["lost-replies", "stale-duplicates"])
def test_no_partition_ever_has_two_owners_and_honest_members_converge(seed, stale):
    s = Schedule(seed, stale)
    rounds = []
    for i in range(3000):
        s.step()
        s.check()
        if i % 500 == 499:
            rounds.append(s.converge())
    # the schedule did exercise what it is about
    assert s.expired > 0 and s.c.rebalances > 10 and max(rounds) >= 1
