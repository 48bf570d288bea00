"""``ZooKeeperOffsetStore``: offsets in ZooKeeper, in MetaQ's layout.

One znode per partition::

    <root>/consumers/<group>/offsets/<topic>/<broker_id>-<partition>

holding ASCII ``"<msgId>-<offset>"`` (MetaQ 1.4's ``ZkOffsetStorage``
format); this store writes msgId ``-1``, e.g. ``"-1-4096"``.  Reading splits
on the last ``-``, and also accepts a plain ``"<offset>"`` (older MetaQ),
so a group can move between MetaQ and hpbroker consumers.

A commit first makes sure the ``.../offsets/<topic>`` parents exist, then
writes all its partitions in one ZooKeeper multi-op transaction (create
the znodes that are missing, set the others): all or nothing.  It returns
once the ensemble has acknowledged the transaction.

kazoo is imported when a store connects, so ``hpbroker.client`` imports
without it; ``pip install 'hpbroker[offsets]'`` brings it.
"""

from __future__ import annotations

import threading
from typing import Iterable, Mapping

from hpbroker.client.stores.base import (
    OffsetStoreError,
    TopicPartition,
    check_group,
    check_offsets,
    check_partitions,
)

#: msgId written in front of every offset (MetaQ's "no message id")
NO_MSG_ID = -1


def encode_offset(offset: int, msg_id: int = NO_MSG_ID) -> bytes:
    return f"{msg_id}-{offset}".encode("ascii")


def decode_offset(data: bytes) -> int:
    """The offset in a MetaQ offset znode: ``"<msgId>-<offset>"`` or ``"<offset>"``.
    ValueError if it is neither."""
    text = data.decode("ascii").strip()
    head, sep, tail = text.rpartition("-")
    number = tail if sep and head else text  # "-1-42" -> "42"; "42" -> "42"; "-42" stays "-42" (bad)
    if head:
        int(head)  # the msgId must be a number too
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"not <msgId>-<offset> or <offset>: {text!r}")
    return int(number)


class ZooKeeperOffsetStore:
    def __init__(self, hosts: str, root: str = "/meta", broker_id: int = 0, timeout_s: float = 10.0, client=None):
        """``client``: a started KazooClient to use instead of a session of
        the store's own (a zk:// consumer shares its one); close() leaves it
        running."""
        if not isinstance(hosts, str) or not hosts.strip():
            raise ValueError("ZooKeeperOffsetStore needs hosts, e.g. '127.0.0.1:2181' or 'zk1:2181,zk2:2181/chroot'")
        if not isinstance(root, str) or not root.startswith("/"):
            raise ValueError(f"root must be an absolute znode path such as '/meta', not {root!r}")
        if isinstance(broker_id, bool) or not isinstance(broker_id, int) or broker_id < 0:
            raise ValueError(f"broker_id must be an int >= 0, not {broker_id!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s!r}")
        self.hosts = hosts
        self.root = root.rstrip("/")  # "/" -> "" (paths then start at /consumers)
        self.broker_id = broker_id
        self.timeout_s = float(timeout_s)
        self._zk = client
        self._own = client is None
        self._mutex = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"ZooKeeperOffsetStore({self.hosts!r}, root={self.root or '/'!r})"

    def node_path(self, group: str, topic: str, partition: int) -> str:
        """The znode that holds *group*'s offset of *topic*/*partition*."""
        return f"{self._topic_path(group, topic)}/{self.broker_id}-{partition}"

    # -- the interface ---------------------------------------------------------

    def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        check_group(group)
        wanted = check_partitions(partitions)
        zk = self._client()
        from kazoo.exceptions import NoNodeError

        pending = {tp: zk.get_async(self.node_path(group, *tp)) for tp in dict.fromkeys(wanted)}
        out = {}
        for tp, result in pending.items():
            path = self.node_path(group, *tp)
            try:
                data, _stat = self._wait(result, f"read {path}")
            except NoNodeError:
                continue
            try:
                out[tp] = decode_offset(data)
            except (ValueError, UnicodeDecodeError) as e:
                raise OffsetStoreError(f"{self!r}: {path} does not hold an offset: {data!r}") from e
        return out

    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        check_group(group)
        offsets = check_offsets(offsets)
        if not offsets:
            return
        zk = self._client()
        from kazoo.exceptions import NodeExistsError, NoNodeError, RolledBackError

        for topic in sorted({t for t, _ in offsets}):
            path = self._topic_path(group, topic)
            self._wait(zk.ensure_path_async(path), f"create {path}")
        nodes = {self.node_path(group, t, p): encode_offset(o) for (t, p), o in sorted(offsets.items())}
        for attempt in range(3):
            existing = {path: zk.exists_async(path) for path in nodes}
            existing = {path: self._wait(result, f"look up {path}") for path, result in existing.items()}
            tx = zk.transaction()
            for path, data in nodes.items():
                if existing[path] is None:
                    tx.create(path, data)
                else:
                    tx.set_data(path, data)
            results = self._wait(tx.commit_async(), f"commit the offsets of group {group!r}", unknown=True)
            errors = [(path, r) for path, r in zip(nodes, results)
                      if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
            if not errors:
                return
            # another committer of this group created or deleted a node between our look-up and the
            # transaction: look again
            if attempt < 2 and all(isinstance(r, (NodeExistsError, NoNodeError)) for _, r in errors):
                continue
            path, error = errors[0]
            raise OffsetStoreError(f"{self!r}: commit of group {group!r} rolled back, nothing written: "
                                   f"{path}: {type(error).__name__} {error}".rstrip())

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            zk, self._zk = self._zk, None
        if zk is not None and self._own:
            _stop(zk)

    # -- ZooKeeper -------------------------------------------------------------------

    def _topic_path(self, group: str, topic: str) -> str:
        for what, name in (("group", group), ("topic", topic)):
            if "/" in name or name in (".", "..") or "\0" in name:
                raise ValueError(f"a {what} stored in ZooKeeper cannot be {name!r} (no '/', '.', '..' or NUL)")
        return f"{self.root}/consumers/{group}/offsets/{topic}"

    def _client(self):
        with self._mutex:
            if self._closed:
                raise OffsetStoreError(f"{self!r} is closed")
            if self._zk is not None:
                return self._zk
            try:
                from kazoo.client import KazooClient
            except ImportError as e:
                raise OffsetStoreError(f"{self!r} needs kazoo: pip install 'hpbroker[offsets]' ({e})") from e
            zk = KazooClient(hosts=self.hosts, timeout=self.timeout_s)
            try:
                zk.start(timeout=self.timeout_s)
            except Exception as e:
                _stop(zk)
                raise OffsetStoreError(f"{self!r}: cannot connect to ZooKeeper at {self.hosts} "
                                       f"within {self.timeout_s:g} s: {e}") from e
            self._zk = zk
            return zk

    def _wait(self, result, what: str, unknown: bool = False):
        """The value of a kazoo async *result*, waited for at most timeout_s.
        NoNodeError passes through (a missing offset); anything else is an
        OffsetStoreError saying what could not be done."""
        from kazoo.exceptions import NoNodeError

        try:
            return result.get(timeout=self.timeout_s)
        except NoNodeError:
            raise
        except Exception as e:
            after = " (it may or may not have been applied)" if unknown else ""
            reason = f"{type(e).__name__} {e}".rstrip()
            raise OffsetStoreError(f"{self!r}: could not {what}{after}: {reason}") from e


def _stop(zk) -> None:
    try:
        zk.stop()
    finally:
        zk.close()
