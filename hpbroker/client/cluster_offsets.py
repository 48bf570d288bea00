"""Where a zk:// consumer group's offsets go: a store, per replica set.

* ``"zookeeper"`` (the default): one :class:`ZooKeeperOffsetStore` per set
  with ``broker_id`` = the set, so the node is MetaQ's
  ``/meta/consumers/<g>/offsets/<topic>/<set>-<p>`` (data ``-1-<offset>``),
  on the cluster's own session unless ``hosts`` names another ensemble;
* ``"broker"``: each set's partitions in that set's own
  ``__consumer_offsets`` (OffsetCommit / OffsetFetch to the coordinator
  acceptor of its master, :class:`~hpbroker.client.group_offsets.GroupOffsets`),
  keyed by the set's own (topic, partition).  The commits are made from
  outside a broker-coordinated group (member ``""``, epoch -1, as Kafka's
  standalone commits): the broker takes them while the group has no
  broker-side members, and answers ``NON_EMPTY_GROUP`` while a group of
  the same name is coordinated there.  They are replicated like any topic,
  so after a promotion within the set they are read from the new master;
  the set's client follows its registered brokers in ZooKeeper;
* ``"file"``, ``"sql"``, ``"module:Class"`` or a store object: one store,
  a set's partition kept as ``("<topic>@<set>", partition)`` so two sets'
  partition 0 never share a row.

Slots are ``(topic, set, partition of the set)``.  ``group`` is the name
the offsets are kept under (``<group>-<instance>`` for a broadcast consumer).
"""

from __future__ import annotations

from typing import Iterable

from hpbroker.cluster.client_group import Slot
from hpbroker.cluster.client_view import ClusterView
from hpbroker.protocol.errors import BrokerError, ErrorCode


class _SetBroker:
    """The offsets of one replica set, on its master: a Transport to the
    set's registered brokers (master first) and a GroupOffsets over it."""

    def __init__(self, urls: list[str], group: str, timeout_ms: int, curve):
        from hpbroker.client.group_offsets import GroupOffsets
        from hpbroker.client.transport import Transport

        self.urls = urls
        self.t = Transport(",".join(urls), request_timeout_ms=timeout_ms, curve=curve)
        self.offsets = GroupOffsets(self.t, group, timeout_ms=timeout_ms)  # no membership: a standalone commit

    def load(self, group: str, tps) -> dict:
        return self.offsets.load(tps)

    def commit(self, group: str, offsets: dict) -> None:
        self.offsets.commit(offsets)

    def close(self) -> None:
        self.t.close()


class ClusterOffsets:
    def __init__(self, view: ClusterView, group: str, spec, path=None, connection=None, hosts=None, *,
                 timeout_ms: int = 30_000, curve=None):
        self.view = view
        self.group = group
        self.spec = spec or "zookeeper"
        if self.spec == "broker" and hosts is not None:
            raise ValueError("offset_store='broker' takes no offset_store_hosts: the offsets go to each set's master")
        self.path, self.connection, self.hosts = path, connection, hosts
        self.timeout_ms = timeout_ms
        self.curve = curve
        self._stores: dict = {}  # set (zookeeper, broker) or None (the one store) -> store

    def _store(self, rs: int):
        """(store, key function) for replica set ``rs``."""
        if self.spec == "broker":
            return self._set_broker(rs), lambda t, p: (t, p)
        if self.spec == "zookeeper":
            st = self._stores.get(rs)
            if st is None:
                from hpbroker.client.stores.zookeeper import ZooKeeperOffsetStore

                st = self._stores[rs] = ZooKeeperOffsetStore(self.hosts or self.view.hosts, broker_id=rs,
                                                             client=None if self.hosts else self.view.zk)
            return st, lambda t, p: (t, p)
        st = self._stores.get(None)
        if st is None:
            from hpbroker.client.stores import resolve_store

            st = self._stores[None] = resolve_store(self.spec, path=self.path, connection=self.connection,
                                                    hosts=self.hosts)
        return st, lambda t, p: (f"{t}@{rs}", p)

    def _set_broker(self, rs: int) -> _SetBroker:
        """Set ``rs``'s client, made again when its registered brokers
        changed (a promotion: the offsets are then read from the new master)."""
        s = self.view.sets().get(rs)
        urls = [] if s is None else s.urls()
        if not urls:
            raise BrokerError(ErrorCode.NOT_LEADER, f"replica set {rs} has no broker registered in ZooKeeper: "
                                                    "its offsets cannot be read or written now")
        st = self._stores.get(rs)
        if st is not None and st.urls != urls:
            st.close()
            st = None
        if st is None:
            st = self._stores[rs] = _SetBroker(urls, self.group, self.timeout_ms, self.curve)
        return st

    def load_sets(self, slots: Iterable[Slot]) -> tuple[dict[Slot, int], dict[int, Exception]]:
        """({slot: committed offset}, {set: why its offsets could not be read}):
        a set that cannot be reached does not keep the others' offsets back."""
        out: dict[Slot, int] = {}
        failed: dict[int, Exception] = {}
        by_set: dict[int, list[Slot]] = {}
        for s in slots:
            by_set.setdefault(s[1], []).append(s)
        for rs, ss in sorted(by_set.items()):
            try:
                store, key = self._store(rs)
                keys = {key(t, p): (t, r, p) for t, r, p in ss}
                got = store.load(self.group, list(keys))
            except Exception as e:  # noqa: BLE001 - reported per set to the caller
                failed[rs] = e
                continue
            for k, off in got.items():
                out[keys[k]] = off
        return out, failed

    def load(self, slots: Iterable[Slot]) -> dict[Slot, int]:
        out, failed = self.load_sets(slots)
        if failed:
            raise next(iter(failed.values()))
        return out

    def commit(self, offsets: dict[Slot, int]) -> None:
        """Durable when it returns: one store commit per set (all or nothing per set)."""
        by_set: dict[int, dict] = {}
        for (t, rs, p), off in offsets.items():
            by_set.setdefault(rs, {})[(t, p)] = off
        for rs, offs in sorted(by_set.items()):
            store, key = self._store(rs)
            store.commit(self.group, {key(t, p): o for (t, p), o in offs.items()})

    def close(self) -> None:
        for st in self._stores.values():
            try:
                st.close()
            except Exception:  # noqa: BLE001 - closing: nothing left to do about it
                pass
        self._stores.clear()
