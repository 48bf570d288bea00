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
sticky      a balanced assignment that keeps every partition where the
            previous target had it unless balance needs it elsewhere.  When
            all members subscribe the same topics (the usual case), counts
            differ by at most one, a join moves only the partitions the
            newcomer must take, a leave only the leaver's.  Otherwise no
            member holds two more than another subscriber of any topic it
            holds a partition of.  Kafka's StickyAssignor / KIP-848's
            uniform assignor.
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
    """Balanced, moving as little as possible from ``previous``.

    When every member subscribes the same topics, the partitions are spread
    so that counts differ by at most one: each member keeps what it had (up
    to its quota), then the partitions left over go to the members furthest
    below their quota.  With different subscriptions, see
    :func:`_sticky_mixed`.
    """
    previous = previous or {}
    out: Assignment = {m: set() for m in subs}
    eff = {m: frozenset(t for t in subs[m] if counts.get(t, 0) > 0) for m in sorted(subs)}
    members = [m for m, topics in eff.items() if topics]
    if not members:
        return out
    if len(set(eff[m] for m in members)) > 1:
        return _sticky_mixed({m: eff[m] for m in members}, counts, previous, out)
    topics = eff[members[0]]
    parts = [(t, p) for t in sorted(topics) for p in range(counts[t])]
    wanted = set(parts)
    per, extra = divmod(len(parts), len(members))
    # who keeps an extra partition: those that already hold more, so fewer move
    held = {m: [tp for tp in sorted(previous.get(m, ())) if tp in wanted] for m in members}
    order = sorted(members, key=lambda m: (-len(held[m]), m))
    quota = {m: per + (1 if i < extra else 0) for i, m in enumerate(order)}
    free = set(parts)
    for m in members:
        keep = [tp for tp in held[m] if tp in free][: quota[m]]  # (a previous that gave one twice: the first keeps it)
        out[m].update(keep)
        free.difference_update(keep)
    for tp in sorted(free):
        m = min(members, key=lambda x: (len(out[x]) - quota[x], x))
        out[m].add(tp)
    return out


def _sticky_mixed(subs: Mapping[str, frozenset[str]], counts: Mapping[str, int], previous: Mapping[str, set[TP]],
                  out: Assignment) -> Assignment:
    """Sticky for members with different subscriptions (during a rolling
    change of subscription, say): each keeps what the previous target gave
    it of its topics; the rest go, the partitions with the fewest possible
    owners first, to the subscriber holding the fewest; then, while some
    member holds two more than a subscriber of one of its partitions'
    topics, one such partition moves to that subscriber (its newest first).
    Every move lowers the sum of squared counts, so this ends; it ends with
    members of the same subscription within one of each other, and no
    member of a shared topic left idle by one that also subscribes to more.
    """
    members = sorted(subs)
    subscribers = {t: [m for m in members if t in subs[m]] for t in sorted({t for ts in subs.values() for t in ts})}
    owned: set[TP] = set()
    for m in members:
        for tp in sorted(previous.get(m, ())):
            if tp[0] in subs[m] and 0 <= tp[1] < counts[tp[0]] and tp not in owned:
                out[m].add(tp)
                owned.add(tp)
    free = [(t, p) for t in subscribers for p in range(counts[t]) if (t, p) not in owned]
    for tp in sorted(free, key=lambda tp: (len(subscribers[tp[0]]), tp)):
        m = min(subscribers[tp[0]], key=lambda x: (len(out[x]), x))
        out[m].add(tp)
    while True:
        for m in sorted(members, key=lambda x: (-len(out[x]), x)):
            best = None  # (receiver's count, topic, receiver): to the least loaded subscriber
            for t in sorted({t for t, _ in out[m]}):
                n = min(subscribers[t], key=lambda x: (len(out[x]), x))
                if len(out[n]) <= len(out[m]) - 2 and (best is None or len(out[n]) < best[0]):
                    best = (len(out[n]), t, n)
            if best is not None:
                _, t, n = best
                had = previous.get(m, ())
                tp = max((tp for tp in out[m] if tp[0] == t), key=lambda tp: (tp not in had, tp))
                out[m].remove(tp)
                out[n].add(tp)
                break
        else:
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
