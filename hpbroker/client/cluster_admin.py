"""``ClusterAdmin``: what ``Admin("zk://...")`` returns - topics across replica sets.

The replica sets and topics are read from ZooKeeper
(:mod:`hpbroker.cluster.client_view`); every change goes to a set's master
with an ordinary :class:`~hpbroker.client.admin.Admin`.  The brokers
register what they hold (``/meta/brokers/topics/<topic>/<set>-m``), so a
topic created here shows in :meth:`describe` once its sets' brokers have
registered it (docs/cluster.md).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from hpbroker.cluster import paths
from hpbroker.cluster.client_view import ClusterView, ReplicaSet
from hpbroker.cluster.paths import MemberNode
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import EARLIEST, LATEST


class ClusterPartition(NamedTuple):
    """One global partition of a topic."""

    partition: int  # the global number: the index in the sorted (set, partition) list
    replica_set: int
    local: int  # its number on the set's brokers
    leader: int | None  # broker id of the set's master; None while the set has none
    replicas: list[int]  # broker ids of the set: the master, then the slaves
    earliest: int | None  # None when the leader did not answer
    latest: int | None


def split(partitions: int, sets: Sequence[int]) -> dict[int, int]:
    """``partitions`` spread over ``sets`` as evenly as possible, the first sets taking one more."""
    if partitions < len(sets):
        raise ValueError(f"{partitions} partitions cannot cover {len(sets)} replica sets: give at least one each")
    per, extra = divmod(partitions, len(sets))
    return {rs: per + (1 if i < extra else 0) for i, rs in enumerate(sets)}


class ClusterAdmin:
    def __init__(self, url: str, *, zk_timeout_ms: int = 10_000, **admin_options):
        self.url = url
        self.options = admin_options
        self._view = ClusterView(url, timeout_s=zk_timeout_ms / 1000.0).start()

    def replica_sets(self) -> dict[int, ReplicaSet]:
        return self._view.refresh_now().sets

    def _admin(self, rs: int, sets: dict[int, ReplicaSet] | None = None):
        from hpbroker.client.admin import Admin

        s = (sets or self.replica_sets()).get(rs)
        if s is None or s.master is None:
            raise BrokerError(ErrorCode.NOT_LEADER, f"replica set {rs} has no master registered in ZooKeeper "
                              f"({self.url})")
        return Admin(s.master.url, **self.options)

    def create_topic(self, name: str, partitions: int, *, brokers: Sequence[int] | None = None,
                     if_not_exists: bool = False) -> dict[int, int]:
        """Create ``name`` with ``partitions`` in all, spread over the masters
        of the replica sets ``brokers`` (default: every set with a master);
        returns {set: its partition count}."""
        sets = self.replica_sets()
        chosen = sorted(dict.fromkeys(brokers)) if brokers else sorted(rs for rs, s in sets.items() if s.master)
        if not chosen:
            raise BrokerError(ErrorCode.NOT_LEADER, f"no replica set has a master registered in ZooKeeper ({self.url})")
        missing = [rs for rs in chosen if rs not in sets or sets[rs].master is None]
        if missing:
            raise BrokerError(ErrorCode.NOT_LEADER, f"replica set(s) {', '.join(map(str, missing))} have no master "
                              f"registered in ZooKeeper; registered: {', '.join(map(str, sorted(sets))) or 'none'}")
        out = {}
        for rs, n in split(partitions, chosen).items():
            with self._admin(rs, sets) as a:
                out[rs] = a.create_topic(name, n, if_not_exists=if_not_exists)
        return out

    def list_topics(self) -> dict[str, int]:
        """{topic: global partition count} of every topic registered in ZooKeeper."""
        from kazoo.exceptions import NoNodeError

        try:
            names = self._view.zk.get_children(paths.BROKER_TOPICS)
        except NoNodeError:
            return {}
        for n in names:
            self._view.watch_topic(n)
        self._view.refresh_now()
        return {n: len(self._view.partitions(n)) for n in sorted(names) if self._view.partitions(n)}

    def partitions(self, name: str) -> list[tuple[int, int]]:
        return self._view.watch_topic(name)

    def limits(self, topics: Sequence[str]) -> tuple[int, int]:
        """The smallest ``(max_batch_bytes, max_request_bytes)`` of the masters
        holding ``topics``' partitions (what a request to any of them must fit);
        NOT_LEADER while one of those sets has no master."""
        sets = sorted({rs for t in topics for rs, _ in self._view.watch_topic(t)})
        batch = request = 4 << 20
        found = []
        for rs in sets:
            with self._admin(rs) as one:
                rep = one.metadata(list(topics))
            found.append((rep.max_batch_bytes or batch, rep.max_request_bytes or request))
        return (min(b for b, _ in found), min(r for _, r in found)) if found else (batch, request)

    def describe(self, name: str, offsets: bool = True) -> list[ClusterPartition]:
        """Every global partition of ``name``: its set, leader, replicas and (asked of the leader) offsets."""
        parts = self._view.watch_topic(name)
        snap = self._view.refresh_now()
        parts = snap.partitions(name)
        if not parts:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                              f"topic {name!r} is not registered by any broker in ZooKeeper ({self.url})")
        admins: dict[int, object] = {}
        out = []
        try:
            for g, (rs, p) in enumerate(parts):
                s = snap.sets.get(rs)
                leader = None if s is None or s.master is None else s.master.broker_id
                replicas = [] if s is None else [n.broker_id for n in ((s.master,) if s.master else ()) + s.slaves]
                earliest = latest = None
                if offsets and leader is not None:
                    try:
                        a = admins.get(rs) or admins.setdefault(rs, self._admin(rs, snap.sets))
                        earliest = a.list_offsets(name, p, EARLIEST)
                        latest = a.list_offsets(name, p, LATEST)
                    except BrokerError:
                        pass
                out.append(ClusterPartition(g, rs, p, leader, replicas, earliest, latest))
        finally:
            for a in admins.values():
                a.close()
        return out

    # -- consumer groups kept in ZooKeeper (docs/cluster.md, "Consumer groups across brokers") --------

    def _zk_children(self, path: str) -> list[str]:
        from kazoo.exceptions import NoNodeError

        try:
            return sorted(self._view.zk.get_children(path))
        except NoNodeError:
            return []

    def _members(self, group: str) -> dict[str, MemberNode]:
        out = {}
        prefix = f"{group}_"
        for name in self._zk_children(paths.group_ids(group)):
            if name.startswith(prefix):
                try:
                    out[name[len(prefix):]] = paths.decode(self._view.zk.get(f"{paths.group_ids(group)}/{name}")[0],
                                                           MemberNode)
                except Exception:  # noqa: BLE001 - gone meanwhile, or not ours
                    continue
        return out

    def _owners(self, group: str, topic: str) -> dict[tuple[int, int], str]:
        base = f"{paths.CONSUMERS}/{group}/owners/{topic}"
        out = {}
        for name in self._zk_children(base):
            try:
                out[paths.parse_partition(name)] = self._view.zk.get(f"{base}/{name}")[0].decode()
            except Exception:  # noqa: BLE001 - released meanwhile, or not a <set>-<p> name
                continue
        return out

    def _store(self, rs: int):
        from hpbroker.client.stores.zookeeper import ZooKeeperOffsetStore

        return ZooKeeperOffsetStore(self._view.hosts, broker_id=rs, client=self._view.zk)

    def _committed(self, group: str, topic: str, parts: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
        out = {}
        for rs in sorted({rs for rs, _ in parts}):
            got = self._store(rs).load(group, [(topic, p) for r, p in parts if r == rs])
            out.update({(rs, p): off for (_t, p), off in got.items()})
        return out

    def list_groups(self):
        """Every group with nodes under /meta/consumers: its state and member count."""
        from hpbroker.client.admin import GroupListing

        return [GroupListing(g, self._state(g), len(self._members(g))) for g in self._zk_children(paths.CONSUMERS)]

    def _state(self, group: str, members=None) -> str:
        members = self._members(group) if members is None else members
        if not members:
            return "empty"
        for topic in sorted({t for m in members.values() for t in m.topics}):
            if set(self._view.watch_topic(topic)) - set(self._owners(group, topic)):
                return "reconciling"  # a partition nobody owns yet: a rebalance is under way
        return "stable"

    def describe_group(self, group: str):
        """Members with the global partitions they own, and per partition the
        committed offset (MetaQ's ZooKeeper node), high watermark, lag and owner."""
        from hpbroker.client.admin import GroupDescription, GroupMember, PartitionLag

        members = self._members(group)
        topics = sorted({t for m in members.values() for t in m.topics}
                        | set(self._zk_children(f"{paths.CONSUMERS}/{group}/offsets")))
        if not members and not topics:
            raise BrokerError(ErrorCode.GROUP_ID_NOT_FOUND, f"group {group!r} has no members and no offsets in "
                              f"ZooKeeper ({self.url})")
        owned: dict[str, list[tuple[str, int]]] = {m: [] for m in members}
        rows = []
        for topic in topics:
            parts = self._view.watch_topic(topic)
            owners = self._owners(group, topic)
            committed = self._committed(group, topic, parts)
            ends = self._offsets(topic, parts)
            for g, rs_p in enumerate(parts):
                owner = owners.get(rs_p)
                if owner in owned:
                    owned[owner].append((topic, g))
                start, hw = ends.get(rs_p, (0, 0))
                c = committed.get(rs_p)
                rows.append(PartitionLag(topic, g, c, hw, max(0, hw - (start if c is None else c)), owner))
        ms = [GroupMember(mid, "", m.host, 0, list(m.topics), sorted(owned[mid]), [], 0)
              for mid, m in sorted(members.items())]
        return GroupDescription(group, self._state(group, members), 0, "range (ZooKeeper)", ms, rows)

    def _offsets(self, topic: str, parts: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        """(log start, high watermark) of each (set, partition), asked of the set's master; absent if it did not answer."""
        out = {}
        sets = self._view.snapshot.sets
        for rs in sorted({rs for rs, _ in parts}):
            try:
                with self._admin(rs, sets) as a:
                    for r, p in parts:
                        if r == rs:
                            out[(r, p)] = (a.list_offsets(topic, p, EARLIEST), a.list_offsets(topic, p, LATEST))
            except BrokerError:
                continue
        return out

    def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """{(topic, global partition): committed offset} from MetaQ's nodes."""
        out = {}
        for topic in self._zk_children(f"{paths.CONSUMERS}/{group}/offsets"):
            parts = self._view.watch_topic(topic)
            got = self._committed(group, topic, parts)
            out.update({(topic, g): got[rs_p] for g, rs_p in enumerate(parts) if rs_p in got})
        return out

    def reset_offsets(self, group: str, spec, topics: Sequence[str] | None = None, dry_run: bool = False):
        """Admin.reset_offsets for a group kept in ZooKeeper: refused
        (NON_EMPTY_GROUP) while it has members; writes MetaQ's offset nodes."""
        from hpbroker.client.admin import OffsetReset, _live_members, reset_spec, GroupMember

        spec = reset_spec(spec)
        members = self._members(group)
        if members:
            raise BrokerError(ErrorCode.NON_EMPTY_GROUP, _live_members(group, [
                GroupMember(mid, "", m.host, 0, list(m.topics), [], [], 0) for mid, m in sorted(members.items())]))
        names = list(dict.fromkeys(topics)) if topics else self._zk_children(f"{paths.CONSUMERS}/{group}/offsets")
        if not names:
            raise BrokerError(ErrorCode.GROUP_ID_NOT_FOUND,
                              f"group {group!r} has no committed offsets: name the topics to reset")
        out = []
        writes: dict[int, dict] = {}
        sets = self._view.refresh_now().sets
        for topic in names:
            parts = self._view.watch_topic(topic)
            if not parts:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} is not registered")
            committed = self._committed(group, topic, parts)
            for rs in sorted({rs for rs, _ in parts}):
                with self._admin(rs, sets) as a:
                    for g, (r, p) in enumerate(parts):
                        if r == rs:
                            old = committed.get((r, p))
                            new = a._reset_target(topic, p, spec, old)
                            out.append(OffsetReset(topic, g, old, new))
                            writes.setdefault(rs, {})[(topic, p)] = new
        out.sort(key=lambda r: (r.topic, r.partition))
        if not dry_run:
            for rs, offs in sorted(writes.items()):
                self._store(rs).commit(group, offs)
        return out

    def close(self) -> None:
        self._view.close()

    def __enter__(self) -> "ClusterAdmin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
