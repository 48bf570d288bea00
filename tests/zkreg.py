"""Registers running brokers in ZooKeeper as issue 22's brokers will register
themselves (hpbroker/cluster/paths.py), so client tests do not wait for the
broker side.

Once ``hpbroker serve --zookeeper`` registers its own nodes, replace each
``Registrar.register_master(rs, broker)`` + ``register_topic(...)`` with the
broker started with ``--zookeeper HOSTS --broker-id rs`` and drop this file.

The nodes are ephemeral nodes of the registrar's own kazoo session, as a
broker's are of its: closing the registrar (or expiring its session) removes
them, as a dead broker's go.
"""

from __future__ import annotations

import time

from hpbroker.cluster import paths
from hpbroker.cluster.paths import BrokerNode


class Registrar:
    def __init__(self, zk_server, chroot: str = ""):
        from kazoo.client import KazooClient

        hosts = zk_server.hosts + (f"/{chroot.strip('/')}" if chroot else "")
        if chroot:
            root = zk_server.client()
            try:
                root.ensure_path(f"/{chroot.strip('/')}")
            finally:
                root.stop()
                root.close()
        # reconnect at least once a second, as the clients do (a late one would lose the session and the nodes)
        self.zk = KazooClient(hosts=hosts, timeout=10.0,
                              connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0})
        self.zk.start(timeout=10.0)

    def register_master(self, rs: int, url: str, broker_id: int | None = None, epoch: int = 0) -> None:
        node = BrokerNode(broker_id=rs if broker_id is None else broker_id, replica_set=rs, url=url, role="master",
                          epoch=epoch, started_ms=int(time.time() * 1000))
        self._put(paths.master(rs), paths.encode(node))

    def register_slave(self, rs: int, broker_id: int, url: str, epoch: int = 0) -> None:
        node = BrokerNode(broker_id=broker_id, replica_set=rs, url=url, role="slave", epoch=epoch)
        self._put(paths.slave(rs, broker_id), paths.encode(node))

    def register_topic(self, topic: str, rs: int, partitions: int) -> None:
        self._put(paths.topic_master(topic, rs), str(partitions).encode())

    def unregister_master(self, rs: int) -> None:
        self.zk.delete(paths.master(rs))

    def _put(self, path: str, data: bytes) -> None:
        from kazoo.exceptions import NodeExistsError

        try:
            self.zk.create(path, data, ephemeral=True, makepath=True)
        except NodeExistsError:
            self.zk.set(path, data)

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()


def expire_session(zk_server, client) -> None:
    """End ``client``'s ZooKeeper session on the server side, as a long
    pause or partition would: a second connection with the same session id
    and password is opened and closed (closing it ends the session), and the
    first connection is then told its session expired."""
    from kazoo.client import KazooClient

    session_id, password = client.client_id
    twin = KazooClient(hosts=zk_server.hosts, client_id=(session_id, password), timeout=10.0)
    twin.start(timeout=10.0)
    twin.stop()
    twin.close()
