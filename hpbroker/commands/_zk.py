"""What the commands that talk to a cluster's ZooKeeper share: its flag, and a session."""

from __future__ import annotations

from hpbroker.commands import UserError


def add_zookeeper_args(p) -> None:
    p.add_argument("--zookeeper", required=True, metavar="HOST:PORT[,...][/chroot]",
                   help="the cluster's ZooKeeper connect string (cluster.zookeeper)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for ZooKeeper (default 10)")


def connect(hosts: str, timeout_s: float):
    """A started kazoo client, or UserError (one line) when ZooKeeper cannot be reached."""
    import logging
    import warnings

    try:
        from kazoo.client import KazooClient
    except ImportError:
        raise UserError("the ZooKeeper commands need kazoo: pip install 'hpbroker[cluster]'") from None
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # its retries are no news to a console user
    warnings.filterwarnings("ignore", message="No chroot path exists")  # a new cluster's chroot: made on write
    zk = KazooClient(hosts=hosts, timeout=timeout_s)
    try:
        zk.start(timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - kazoo's timeout and connection errors
        zk.close()
        raise UserError(f"cannot reach ZooKeeper at {hosts} within {timeout_s:g} s: {e}") from None
    return zk


def close(zk) -> None:
    zk.stop()
    zk.close()
