"""Where a zk:// consumer group's offsets go: a store, per replica set.

* ``"zookeeper"`` (the default): one :class:`ZooKeeperOffsetStore` per set
  with ``broker_id`` = the set, so the node is MetaQ's
  ``/meta/consumers/<g>/offsets/<topic>/<set>-<p>`` (data ``-1-<offset>``),
  on the cluster's own session unless ``hosts`` names another ensemble;
* ``"file"``, ``"sql"``, ``"module:Class"`` or a store object: one store,
  a set's partition kept as ``("<topic>@<set>", partition)`` so two sets'
  partition 0 never share a row.

Slots are ``(topic, set, partition of the set)``.
"""

from __future__ import annotations

from typing import Iterable

from hpbroker.cluster.client_group import Slot
from hpbroker.cluster.client_view import ClusterView


class ClusterOffsets:
    def __init__(self, view: ClusterView, group: str, spec, path=None, connection=None, hosts=None):
        if spec == "broker":
            raise ValueError("offset_store='broker' is not supported with a zk:// URL: the group lives in "
                             "ZooKeeper; use 'zookeeper' (the default), 'file', 'sql' or your own store")
        self.view = view
        self.group = group
        self.spec = spec or "zookeeper"
        self.path, self.connection, self.hosts = path, connection, hosts
        self._stores: dict = {}  # set (zookeeper) or None (the one store) -> store

    def _store(self, rs: int):
        """(store, key function) for replica set ``rs``."""
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

    def load(self, slots: Iterable[Slot]) -> dict[Slot, int]:
        out = {}
        by_set: dict[int, list[Slot]] = {}
        for s in slots:
            by_set.setdefault(s[1], []).append(s)
        for rs, ss in sorted(by_set.items()):
            store, key = self._store(rs)
            keys = {key(t, p): (t, r, p) for t, r, p in ss}
            for k, off in store.load(self.group, list(keys)).items():
                out[keys[k]] = off
        return out

    def commit(self, offsets: dict[Slot, int]) -> None:
        """Durable when it returns: one store commit per set (all or nothing per set)."""
        by_set: dict[int, dict] = {}
        for (t, rs, p), off in offsets.items():
            _store, key = self._store(rs)
            by_set.setdefault(rs, {})[key(t, p)] = off
        for rs, offs in sorted(by_set.items()):
            self._store(rs)[0].commit(self.group, offs)

    def close(self) -> None:
        for st in self._stores.values():
            try:
                st.close()
            except Exception:  # noqa: BLE001 - closing: nothing left to do about it
                pass
        self._stores.clear()
