"""Transactions through a ``zk://`` producer: each one bound to one replica set.

A transaction is a broker's (docs/transactions.md): its journal, its
commit record and its appends live on one master, and the slave of that
set follows them.  So, as in MetaQ, whose producer kept a transaction on
the broker of its first message, a :class:`ClusterTransaction` is bound to
the replica set of its first message (or to the one named with
``replica_set=``), and every later message must land there too:

* no key and no partition: round robin over the topic's global
  partitions that live on the bound set;
* a key or a partition: routed as outside a transaction (the same
  ``partition_for_key`` over the global list, so a key's order holds
  inside and outside transactions); a message that lands on another set
  is refused with ``BAD_REQUEST`` before anything is added, and the
  transaction goes on.

XA branches (:class:`ClusterXa`) are bound the same way.  A recovering
coordinator's ``tpc_recover()`` asks every registered set, and
``tpc_commit(xid)``/``tpc_rollback(xid)`` end the branch on the set that
holds it.  A branch that never got a message is read-only, as XA has it:
``tpc_prepare`` and the ends do nothing on any broker.
"""

from __future__ import annotations

import itertools
from typing import Sequence

from hpbroker.client.partitioner import partition_for_key
from hpbroker.protocol.errors import BrokerError, ErrorCode


class ClusterTransaction:
    """A local transaction of a ClusterProducer (``with cp.transaction() as tx``)."""

    def __init__(self, cluster, timeout_ms: int | None, replica_set: int | None = None):
        self.cluster = cluster
        self.timeout_ms = timeout_ms
        self.replica_set: int | None = None
        self.inner = None  # the bound set's Transaction, from the first message on
        self.state = "open"
        self._rr = itertools.count()
        if replica_set is not None:
            self._bind(replica_set)

    @property
    def txid(self) -> str | None:
        return None if self.inner is None else self.inner.txid

    @property
    def messages(self) -> int:
        return 0 if self.inner is None else self.inner.messages

    def _begin(self, producer):
        return producer.transaction(self.timeout_ms)

    def _bind(self, rs: int) -> None:
        self.inner = self._begin(self.cluster._producer(rs))
        self.replica_set = rs

    def _target(self, topic: str, key: bytes | None, partition: int | None) -> int:
        """The set's own partition for this message, binding the transaction at its first."""
        if self.state != "open":
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"transaction is {self.state}: no more messages may join it")
        parts = self.cluster.partitions(topic)
        n = len(parts)
        if partition is not None and not 0 <= partition < n:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                              f"{topic!r} has {n} partitions across the cluster, no partition {partition}")
        if partition is None and key is not None:
            partition = partition_for_key(bytes(key), n)
        if partition is None:
            mine = range(n) if self.replica_set is None else [g for g in range(n) if parts[g][0] == self.replica_set]
            if not mine:
                raise BrokerError(ErrorCode.BAD_REQUEST,
                                  f"{topic!r} has no partition on replica set {self.replica_set}, which this "
                                  "transaction is bound to (a transaction stays on the set of its first message)")
            partition = mine[next(self._rr) % len(mine)]
        rs, p = parts[partition]
        if self.replica_set is None:
            self._bind(rs)
        elif rs != self.replica_set:
            raise BrokerError(ErrorCode.BAD_REQUEST,
                              f"{topic!r} partition {partition} is on replica set {rs}, and this transaction is bound "
                              f"to replica set {self.replica_set} (the set of its first message): a transaction "
                              "stays on one set (docs/client.md, \"Transactions in a cluster\")")
        return p

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None, *,
             headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        p = self._target(topic, key, partition)
        self.inner.send(topic, value, key, p, headers=headers)

    def send_batch(self, topic: str, values: Sequence[bytes], partition: int | None = None,
                   keys: Sequence[bytes | None] | None = None, *,
                   headers: Sequence[Sequence[tuple[str, bytes]] | None] | None = None) -> None:
        if not len(values):
            raise ValueError("send_batch needs at least one value")
        p = self._target(topic, None, partition)
        self.inner.send_batch(topic, values, p, keys, headers=headers)

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()

    def commit(self) -> None:
        if self.state not in ("open", "prepared"):
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"transaction is {self.state}")
        if self.inner is not None:
            self.inner.commit()
        self.state = "committed"

    def rollback(self) -> None:
        if self.state in ("committed", "rolled_back"):
            return
        try:
            if self.inner is not None:
                self.inner.rollback()
        finally:
            self.state = "rolled_back"

    def __enter__(self) -> "ClusterTransaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        elif self.state == "open":
            try:
                self.rollback()
            except BrokerError:
                pass  # the original exception says more; the broker's timeout rolls it back anyway


class ClusterXa(ClusterTransaction):
    """An XA branch of a ClusterProducer, between tpc_begin and its end."""

    def __init__(self, cluster, xid):
        self.xid = xid
        super().__init__(cluster, None)

    def _begin(self, producer):
        producer.tpc_begin(self.xid)
        return producer._xa

    def prepare(self) -> None:
        if self.state != "open":
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"tpc_prepare: the branch is {self.state}")
        if self.inner is not None:
            self.cluster._producer(self.replica_set).tpc_prepare()
        self.state = "prepared"

    def commit(self) -> None:
        if self.state not in ("open", "prepared"):
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"tpc_commit: the branch is {self.state}")
        if self.inner is not None:
            self.cluster._producer(self.replica_set).tpc_commit()
        self.state = "committed"

    def rollback(self) -> None:
        try:
            if self.inner is not None and self.state in ("open", "prepared"):
                self.cluster._producer(self.replica_set).tpc_rollback()
        finally:
            self.state = "rolled_back"


class ClusterTransactional:
    """The transaction API of :class:`~hpbroker.client.cluster_producer.ClusterProducer`:
    ``transaction()`` and PEP 249's ``tpc_*``, as :class:`~hpbroker.client.xa.Transactional`
    gives a Producer, with each transaction bound to one replica set."""

    _xa_branch: ClusterXa | None = None

    def transaction(self, timeout_ms: int | None = None, *, replica_set: int | None = None) -> ClusterTransaction:
        """A local transaction, bound to ``replica_set`` or to the set of its first message."""
        return ClusterTransaction(self, timeout_ms, replica_set)

    def xid(self, format_id: int, gtrid: str, bqual: str):
        from hpbroker.client.xa import make_xid

        return make_xid(format_id, gtrid, bqual)

    def tpc_begin(self, xid) -> None:
        from hpbroker.client.xa import _as_xid

        if self._xa_branch is not None:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE,
                              f"tpc_begin while branch {self._xa_branch.xid} is {self._xa_branch.state}: finish it first")
        self._xa_branch = ClusterXa(self, _as_xid(xid))

    def tpc_prepare(self) -> None:
        self._branch("tpc_prepare").prepare()

    def tpc_commit(self, xid=None) -> None:
        if xid is None:
            branch = self._branch("tpc_commit")
            try:
                branch.commit()
            finally:
                if branch.state in ("committed", "rolled_back"):
                    self._xa_branch = None
            return
        self._end_recovered(xid, "tpc_commit")

    def tpc_rollback(self, xid=None) -> None:
        if xid is None:
            branch = self._branch("tpc_rollback")
            try:
                branch.rollback()
            finally:
                self._xa_branch = None
            return
        self._end_recovered(xid, "tpc_rollback")

    def tpc_recover(self) -> list:
        """The prepared XA branches of every registered replica set."""
        out = []
        for rs in sorted(self._view.sets()):
            out.extend(x for x in self._producer(rs).tpc_recover() if x not in out)
        return out

    def _end_recovered(self, xid, how: str) -> None:
        from hpbroker.client.xa import _as_xid

        xid = _as_xid(xid)
        for rs in sorted(self._view.sets()):
            producer = self._producer(rs)
            if xid in producer.tpc_recover():
                getattr(producer, how)(xid)
                return
        raise BrokerError(ErrorCode.UNKNOWN_TRANSACTION,
                          f"{how}: no replica set registered in ZooKeeper holds prepared branch {xid}")

    def _branch(self, what: str) -> ClusterXa:
        if self._xa_branch is None:
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"{what} outside a transaction (no tpc_begin)")
        return self._xa_branch
