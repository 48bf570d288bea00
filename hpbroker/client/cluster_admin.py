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

    def close(self) -> None:
        self._view.close()

    def __enter__(self) -> "ClusterAdmin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
