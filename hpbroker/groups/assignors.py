"""Who in a consumer group gets which partition: the broker-side assignors.

Each assignor is a pure function of the members' subscriptions, the topics'
partition counts and (for ``sticky``) the previous target, and returns
``{member_id: set of (topic, partition)}`` covering every subscribed
partition exactly once.  Members are taken in sorted id order, so every
run over the same input gives the same answer.

==========  ===================================================================
name        rule
==========  ===================================================================
range       MetaQ's default (``DefaultLoadBalanceStrategy``) and Kafka's
            RangeAssignor: per topic, the sorted subscribers each take a
            contiguous run of ``P // C`` partitions, the first ``P % C`` one
            more.  Co-partitioned topics line up; a join or leave can move
            almost every partition.
roundrobin  Kafka's RoundRobinAssignor: all subscribed (topic, partition)
            pairs, sorted, dealt in turn to the members subscribed to each.
sticky      a balanced assignment (member counts differ by at most one per
            topic set) that keeps every partition where the previous target
            had it unless balance needs it elsewhere: a join moves only the
            partitions the newcomer must take, a leave only the leaver's.
            Kafka's StickyAssignor / KIP-848's uniform assignor.
==========  ===================================================================
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping

TP = tuple[str, int]
Assignment = dict[str, set[TP]]
#: (subscriptions {member: topics}, partition counts {topic: n}, previous target) -> target
Assignor = Callable[[Mapping[str, frozenset[str]], Mapping[str, int], Mapping[str, set[TP]]], Assignment]


def _subscribers(subs: Mapping[str, frozenset[str]], counts: Mapping[str, int]) -> dict[str, list[str]]:
    by_topic: dict[str, list[str]] = defaultdict(list)
    for member in sorted(subs):
        for topic in subs[member]:
            if counts.get(topic, 0) > 0:
                by_topic[topic].append(member)
    return by_topic


def range_assign(subs, counts, previous=None) -> Assignment:
    out: Assignment = {m: set() for m in subs}
    for topic, members in sorted(_subscribers(subs, counts).items()):
        n, c = counts[topic], len(members)
        per, extra = divmod(n, c)
        start = 0
        for i, member in enumerate(members):
            take = per + (1 if i < extra else 0)
            out[member].update((topic, p) for p in range(start, start + take))
            start += take
    return out


def roundrobin_assign(subs, counts, previous=None) -> Assignment:
    out: Assignment = {m: set() for m in subs}
    by_topic = _subscribers(subs, counts)
    ring = sorted(subs)
    if not ring:
        return out
    i = 0
    for topic in sorted(by_topic):
        eligible = set(by_topic[topic])
        for p in range(counts[topic]):
            while ring[i % len(ring)] not in eligible:
                i += 1
            out[ring[i % len(ring)]].add((topic, p))
            i += 1
    return out


def sticky_assign(subs, counts, previous=None) -> Assignment:
    """Balanced per group of members with the same subscription, moving as
    little as possible from ``previous``.

    Members are grouped by their exact topic set (the usual case is one
    group: every member subscribes the same topics).  Within a group the
    partitions of those topics are spread so that counts differ by at most
    one: each member keeps what it had (up to its quota), then the
    partitions left over go to the members furthest below their quota.
    """
    previous = previous or {}
    out: Assignment = {m: set() for m in subs}
    groups: dict[frozenset[str], list[str]] = defaultdict(list)
    for member in sorted(subs):
        topics = frozenset(t for t in subs[member] if counts.get(t, 0) > 0)
        if topics:
            groups[topics].append(member)
    taken: set[TP] = set()
    for topics, members in sorted(groups.items(), key=lambda kv: sorted(kv[0])):
        parts = [(t, p) for t in sorted(topics) for p in range(counts[t]) if (t, p) not in taken]
        taken.update(parts)
        wanted = set(parts)
        per, extra = divmod(len(parts), len(members))
        # who keeps an extra partition: those that already hold more, so fewer move
        held = {m: [tp for tp in sorted(previous.get(m, ())) if tp in wanted] for m in members}
        order = sorted(members, key=lambda m: (-len(held[m]), m))
        quota = {m: per + (1 if i < extra else 0) for i, m in enumerate(order)}
        free = set(parts)
        for m in members:
            keep = held[m][: quota[m]]
            out[m].update(keep)
            free.difference_update(keep)
        for tp in sorted(free):
            m = min(members, key=lambda x: (len(out[x]) - quota[x], x))
            out[m].add(tp)
    return out


ASSIGNORS: dict[str, Assignor] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "sticky": sticky_assign,
}


def moved(before: Mapping[str, set[TP]], after: Mapping[str, set[TP]]) -> int:
    """How many partitions have a different owner in ``after`` than in
    ``before`` (a partition that had none, or has none now, does not count)."""
    owner = {tp: m for m, tps in before.items() for tp in tps}
    return sum(1 for m, tps in after.items() for tp in tps if tp in owner and owner[tp] != m)
