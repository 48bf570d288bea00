"""The broker-side assignors (hpbroker/groups/assignors.py), as pure functions.

Every assignor must cover each subscribed partition exactly once, give a
member only partitions of topics it subscribes to, and give the same answer
for the same input.  Beyond that: ``range`` is MetaQ's rule exactly, and
``sticky`` is balanced and moves only what a membership change forces.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpbroker.groups.assignors import ASSIGNORS, moved, range_assign, roundrobin_assign, sticky_assign

NAMES = sorted(ASSIGNORS)
TOPICS = ["a", "b", "c"]

# -- strategies ----------------------------------------------------------------------

member_ids = st.lists(st.sampled_from([f"m{i}" for i in range(20)]), min_size=1, max_size=12, unique=True)
counts_st = st.fixed_dictionaries({t: st.integers(0, 24) for t in TOPICS})


@st.composite
def subscriptions(draw, homogeneous=None):
    """(subs, counts): members subscribing to subsets of a, b, c (some
    topics may have no partitions, i.e. not exist)."""
    members = draw(member_ids)
    counts = draw(counts_st)
    if homogeneous is None:
        homogeneous = draw(st.booleans())
    if homogeneous:
        topics = frozenset(draw(st.sets(st.sampled_from(TOPICS), min_size=1)))
        subs = {mid: topics for mid in members}
    else:
        subs = {mid: frozenset(draw(st.sets(st.sampled_from(TOPICS)))) for mid in members}
    return subs, counts


def universe(subs, counts) -> set:
    """Every partition some member subscribes to."""
    return {(t, p) for topics in subs.values() for t in topics for p in range(counts.get(t, 0))}


def owner_map(assignment) -> dict:
    return {tp: mid for mid, tps in assignment.items() for tp in tps}


def check_cover(subs, counts, out):
    """Each subscribed partition exactly once, only to a subscriber of its topic."""
    assert set(out) == set(subs), "one entry per member, no other"
    every = [tp for tps in out.values() for tp in tps]
    assert len(every) == len(set(every)), f"a partition given twice: {Counter(every).most_common(3)}"
    assert set(every) == universe(subs, counts)
    for mid, tps in out.items():
        for t, p in tps:
            assert t in subs[mid], f"{mid} got {t}/{p} without subscribing to {t}"
            assert 0 <= p < counts[t]


# -- every assignor ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=300, deadline=None)
@given(data=subscriptions())
def test_every_subscribed_partition_exactly_once_and_only_to_subscribers(name, data):
    subs, counts = data
    check_cover(subs, counts, ASSIGNORS[name](subs, counts, {}))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=200, deadline=None)
@given(data=subscriptions(), seed=st.integers(0, 2**32 - 1))
def test_deterministic_whatever_the_order_members_are_listed_in(name, data, seed):
    subs, counts = data
    assign = ASSIGNORS[name]
    first = assign(subs, counts, {})
    items = list(subs.items())
    random.Random(seed).shuffle(items)
    assert assign(dict(items), counts, {}) == first
    assert assign(subs, dict(reversed(list(counts.items()))), {}) == first
    # and with a previous target (only sticky reads it)
    assert assign(subs, counts, first) == assign(dict(items), counts, first)


@pytest.mark.parametrize("name", NAMES)
def test_no_members_and_no_partitions(name):
    assign = ASSIGNORS[name]
    assert assign({}, {"a": 4}, {}) == {}
    assert assign({"m1": frozenset({"a"})}, {}, {}) == {"m1": set()}
    assert assign({"m1": frozenset({"a"})}, {"a": 0}, {}) == {"m1": set()}
    assert assign({"m1": frozenset()}, {"a": 3}, {}) == {"m1": set()}


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=200, deadline=None)
@given(data=subscriptions(homogeneous=True))
def test_balanced_when_everyone_subscribes_the_same_topics(name, data):
    """range balances each topic alone, so only within a topic; the other
    two balance the whole set."""
    subs, counts = data
    out = ASSIGNORS[name](subs, counts, {})
    if name == "range":
        for t in next(iter(subs.values())):
            per_topic = [sum(1 for tp in tps if tp[0] == t) for tps in out.values()]
            assert max(per_topic) - min(per_topic) <= 1
    else:
        sizes = [len(tps) for tps in out.values()]
        assert max(sizes) - min(sizes) <= 1


# -- range: MetaQ's DefaultLoadBalanceStrategy --------------------------------------------


def metaq_range(subs, counts):
    """MetaQ's rule, written out from its description: per topic, the sorted
    subscribers; consumer i of C takes P // C partitions, plus one when
    i < P % C, in a contiguous run starting at i * (P // C) + min(i, P % C)."""
    out = {mid: set() for mid in subs}
    for t in sorted({t for ts in subs.values() for t in ts}):
        n = counts.get(t, 0)
        consumers = sorted(mid for mid, ts in subs.items() if t in ts)
        if not n or not consumers:
            continue
        per, extra = divmod(n, len(consumers))
        for i, mid in enumerate(consumers):
            start = i * per + min(i, extra)
            out[mid].update((t, p) for p in range(start, start + per + (1 if i < extra else 0)))
    return out


@settings(max_examples=300, deadline=None)
@given(data=subscriptions())
def test_range_is_metaqs_rule(data):
    subs, counts = data
    assert range_assign(subs, counts) == metaq_range(subs, counts)


def test_range_examples():
    subs = {mid: frozenset({"a"}) for mid in ("c", "a", "b")}
    # 8 over 3: 3, 3, 2, in sorted member order, contiguous
    assert range_assign(subs, {"a": 8}) == {"a": {("a", 0), ("a", 1), ("a", 2)},
                                            "b": {("a", 3), ("a", 4), ("a", 5)},
                                            "c": {("a", 6), ("a", 7)}}
    # fewer partitions than consumers: the last ones get nothing
    assert range_assign(subs, {"a": 2}) == {"a": {("a", 0)}, "b": {("a", 1)}, "c": set()}
    # co-partitioned topics line up
    subs2 = {mid: frozenset({"a", "b"}) for mid in ("x", "y")}
    out = range_assign(subs2, {"a": 4, "b": 4})
    assert {p for t, p in out["x"] if t == "a"} == {p for t, p in out["x"] if t == "b"} == {0, 1}


# -- roundrobin -------------------------------------------------------------------------


def test_roundrobin_deals_the_sorted_partitions_in_turn():
    subs = {mid: frozenset({"a", "b"}) for mid in ("y", "x")}
    out = roundrobin_assign(subs, {"a": 3, "b": 2})
    assert out == {"x": {("a", 0), ("a", 2), ("b", 1)}, "y": {("a", 1), ("b", 0)}}
    # a member not subscribed to a topic is skipped, not given a turn's partition
    subs = {"x": frozenset({"a"}), "y": frozenset({"a", "b"})}
    out = roundrobin_assign(subs, {"a": 2, "b": 2})
    assert out == {"x": {("a", 0)}, "y": {("a", 1), ("b", 0), ("b", 1)}}


# -- sticky ------------------------------------------------------------------------------


def effective(subs, counts):
    """A member's topics that have partitions: what sticky groups members by."""
    return {mid: frozenset(t for t in ts if counts.get(t, 0) > 0) for mid, ts in subs.items()}


def check_sticky_balance(subs, counts, out):
    eff = effective(subs, counts)
    for topics in set(eff.values()):
        sizes = [len(out[mid]) for mid in subs if eff[mid] == topics]
        assert max(sizes) - min(sizes) <= 1, f"members subscribed to {sorted(topics)} hold {sorted(sizes)}"


@settings(max_examples=300, deadline=None)
@given(data=subscriptions())
def test_sticky_is_balanced_among_members_with_the_same_subscription(data):
    subs, counts = data
    check_sticky_balance(subs, counts, sticky_assign(subs, counts, {}))


def check_no_move_improves_balance(subs, counts, out):
    """No partition could go to another subscriber of its topic that holds
    two or more fewer partitions than its owner (which implies balance
    among members with the same subscription)."""
    size = {mid: len(tps) for mid, tps in out.items()}
    for mid, tps in out.items():
        for t, p in tps:
            for other, topics in subs.items():
                if t in topics:
                    assert size[other] >= size[mid] - 1, \
                        f"{mid} holds {size[mid]} with {t}/{p}, {other} subscribes to {t} and holds {size[other]}"


@settings(max_examples=300, deadline=None)
@given(data=subscriptions(homogeneous=False), seed=st.integers(0, 2**32 - 1))
def test_sticky_with_different_subscriptions_shares_every_topic_among_its_subscribers(data, seed):
    subs, counts = data
    out = sticky_assign(subs, counts, {})
    check_cover(subs, counts, out)
    check_no_move_improves_balance(subs, counts, out)
    # the same from any previous target, and with nothing changed nothing moves
    rng = random.Random(seed)
    junk = {mid: {tp for tp in universe(subs, counts) if rng.random() < 0.3} for mid in subs}
    again = sticky_assign(subs, counts, junk)
    check_cover(subs, counts, again)
    check_no_move_improves_balance(subs, counts, again)
    assert sticky_assign(subs, counts, again) == again


def test_sticky_a_member_with_one_more_topic_does_not_take_the_shared_one():
    """A rolling change of subscription: the first member restarted with a
    second topic used to take every partition of the first topic too,
    leaving the others idle."""
    subs = {"a": frozenset({"t"}), "b": frozenset({"t"}), "c": frozenset({"t", "s"})}
    counts = {"t": 6, "s": 2}
    before = sticky_assign({mid: frozenset({"t"}) for mid in subs}, counts, {})
    after = sticky_assign(subs, counts, before)
    assert sorted(len(v) for v in after.values()) == [2, 3, 3]
    assert after["a"] and after["b"]
    assert moved(before, after) <= 2  # c gives up what balance needs, no more
    check_no_move_improves_balance(subs, counts, after)


@st.composite
def sticky_history(draw):
    """A homogeneous group after a random run of joins and leaves, each
    assignment computed from the one before, as the coordinator does."""
    topics = frozenset(draw(st.sets(st.sampled_from(TOPICS), min_size=1)))
    counts = draw(st.fixed_dictionaries({t: st.integers(1, 40) for t in TOPICS}))
    pool = [f"m{i:02d}" for i in range(16)]
    members = set(draw(st.sets(st.sampled_from(pool), min_size=1, max_size=10)))
    prev = sticky_assign({mid: topics for mid in members}, counts, {})
    for op in draw(st.lists(st.sampled_from(pool), max_size=12)):
        if op in members and len(members) > 1:
            members.discard(op)
        else:
            members.add(op)
        subs = {mid: topics for mid in members}
        prev = sticky_assign(subs, counts, prev)
        check_cover(subs, counts, prev)
        check_sticky_balance(subs, counts, prev)
    return topics, counts, members, prev, pool


@settings(max_examples=300, deadline=None)
@given(h=sticky_history())
def test_sticky_keeps_everything_when_nothing_changed(h):
    topics, counts, members, prev, _ = h
    subs = {mid: topics for mid in members}
    assert sticky_assign(subs, counts, prev) == prev


@settings(max_examples=300, deadline=None)
@given(h=sticky_history(), data=st.data())
def test_sticky_join_moves_only_what_the_newcomer_must_take(h, data):
    topics, counts, members, prev, pool = h
    newcomer = data.draw(st.sampled_from([f"n{i}" for i in range(3)] + sorted(set(pool) - members)))
    subs = {mid: topics for mid in members | {newcomer}}
    after = sticky_assign(subs, counts, prev)
    total = sum(counts[t] for t in topics)
    n = len(members)
    assert moved(prev, after) <= math.ceil(total / (n + 1))
    # and every partition that moved went to the newcomer
    before = owner_map(prev)
    assert all(after[mid] <= prev[mid] for mid in members)
    assert {tp for tp, mid in owner_map(after).items() if before[tp] != mid} == after[newcomer]
    assert len(after[newcomer]) == total // (n + 1)


@settings(max_examples=300, deadline=None)
@given(h=sticky_history(), data=st.data())
def test_sticky_leave_moves_only_the_leavers_partitions(h, data):
    topics, counts, members, prev, _ = h
    if len(members) < 2:
        return
    leaver = data.draw(st.sampled_from(sorted(members)))
    subs = {mid: topics for mid in members - {leaver}}
    after = sticky_assign(subs, counts, prev)
    assert moved(prev, after) == len(prev[leaver])
    assert all(prev[mid] <= after[mid] for mid in subs)  # nobody lost anything


def test_sticky_examples():
    subs = {mid: frozenset({"a"}) for mid in ("x", "y")}
    two = sticky_assign(subs, {"a": 6}, {})
    assert sorted(len(v) for v in two.values()) == [3, 3]
    three = sticky_assign({**subs, "z": frozenset({"a"})}, {"a": 6}, two)
    # z takes one from each of x and y; x and y keep the rest
    assert len(three["z"]) == 2 and three["x"] < two["x"] and three["y"] < two["y"]
    assert moved(two, three) == 2
    # range, for comparison, moves more on the same join
    assert moved(range_assign(subs, {"a": 6}), range_assign({**subs, "z": frozenset({"a"})}, {"a": 6})) == 3


# -- moved() -------------------------------------------------------------------------


def test_moved_counts_only_partitions_that_changed_owner():
    a, b = ("t", 0), ("t", 1)
    assert moved({}, {}) == 0
    assert moved({"x": {a, b}}, {"x": {a, b}}) == 0
    assert moved({"x": {a}}, {"y": {a}}) == 1
    assert moved({"x": {a}, "y": {b}}, {"x": {b}, "y": {a}}) == 2  # a swap is two moves
    assert moved({"x": {a}}, {"x": {a}, "y": {b}}) == 0  # b had no owner before
    assert moved({"x": {a, b}}, {"x": {a}}) == 0  # b has none now
    assert moved({"x": {a, b}}, {"y": {a}}) == 1  # x left: a moved, b is nobody's
    assert moved({"x": {a}, "y": set()}, {"x": set(), "y": {a}}) == 1


@settings(max_examples=300, deadline=None)
@given(before=st.dictionaries(st.sampled_from("xyz"), st.sets(st.integers(0, 9))),
       after=st.dictionaries(st.sampled_from("xyz"), st.sets(st.integers(0, 9))))
def test_moved_matches_a_brute_force_count(before, after):
    def norm(d):  # a partition belongs to one member at most: keep the first claim
        seen, out = set(), {}
        for mid in sorted(d):
            out[mid] = {("t", p) for p in d[mid] if p not in seen}
            seen |= d[mid]
        return out

    before, after = norm(before), norm(after)
    expected = 0
    for p in range(10):
        tp = ("t", p)
        old = [mid for mid, tps in before.items() if tp in tps]
        new = [mid for mid, tps in after.items() if tp in tps]
        if old and new and old != new:
            expected += 1
    assert moved(before, after) == expected
