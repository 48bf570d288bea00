"""ACLs kept in ZooKeeper (``security.acl_source = "zookeeper"``).

One ACL for the whole cluster, in ZooKeeper at :data:`~hpbroker.cluster.paths.ACL`
(the same TOML text as an ``acl_file``; docs/security.md, "ACLs").
``hpbroker acl push FILE`` checks it and writes it there; every broker's
:class:`AclMirror` watches the node and writes each valid version to a
file in its data directory, which its acceptors reload as they reload an
``acl_file`` (:mod:`hpbroker.security.reload`).  The mirror is durable, so
a broker that restarts while ZooKeeper is down keeps the last rules it saw,
never none.  An invalid text in the node (written by hand, not by ``acl
push``) is logged and the mirror keeps the rules in force.

The ZooKeeper client is passed in (a kazoo ``KazooClient``, started).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpbroker.cluster import paths
from hpbroker.security.acl import Acl, AclError

log = logging.getLogger("hpbroker.cluster")

MIRROR_NAME = "acl.zookeeper.toml"  # in the broker's data directory


def push_acl(zk, text: bytes, where: str = "ACL") -> int:
    """Check ``text`` and make it the cluster's ACL: -> the node's new version.
    AclError (naming ``where``) for rules that do not parse."""
    acl = Acl.parse(text, where)
    zk.ensure_path(paths.parent(paths.ACL))
    if zk.exists(paths.ACL) is None:
        zk.create(paths.ACL, text)
        version = 0
    else:
        version = zk.set(paths.ACL, text).version
    log.info("pushed an ACL of %d rules to %s (version %d)", len(acl.rules), paths.ACL, version)
    return version


def read_acl(zk) -> tuple[bytes, int] | None:
    """(text, version) of the cluster's ACL, or None when there is none."""
    if zk.exists(paths.ACL) is None:
        return None
    data, stat = zk.get(paths.ACL)
    return data, stat.version


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or its old content, after a crash too."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class AclMirror:
    """Keeps ``data_dir/acl.zookeeper.toml`` equal to the last valid ACL in
    ZooKeeper, from a kazoo data watch (its callbacks run on kazoo's thread)."""

    def __init__(self, zk, data_dir: str | os.PathLike):
        self.zk = zk
        self.path = Path(data_dir) / MIRROR_NAME
        self.version = -1  # of the node last mirrored
        self.rejected = 0
        self._watch = None

    def start(self) -> None:
        self._watch = self.zk.DataWatch(paths.ACL, self._changed)

    def _changed(self, data, stat, event=None) -> None:
        if data is None or stat is None:
            return  # no node (yet, or deleted): the rules in force stay
        if stat.version == self.version:
            return
        try:
            acl = Acl.parse(data, f"ZooKeeper {paths.ACL} (version {stat.version})")
        except AclError as e:
            self.rejected += 1
            log.error("security: kept the rules in force, the ACL in ZooKeeper is not valid: %s", e)
            return
        write_atomically(self.path, data)
        self.version = stat.version
        log.info("mirrored the cluster's ACL (%d rules, version %d) to %s", len(acl.rules), stat.version, self.path)
