"""``ClusterProducer``: what ``Producer("zk://...")`` returns (docs/client.md, "Clusters: zk:// URLs").

It keeps one ordinary :class:`~hpbroker.client.producer.Producer` per
replica set, given that set's master and slave URLs (so each follows a
promotion within its set as a Producer given several brokers does), and
routes every message over the topic's *global partition list*
(:mod:`hpbroker.cluster.client_view`):

* ``partition=g`` given: global partition ``g`` (an index into the list);
* a key: ``partition_for_key(key, len(list))`` - the same CRC-32C as a
  single broker's, over the global list (MetaQ's partition selectors hash
  over the whole cluster's list too);
* neither: round robin over the list.

The list is read from the ZooKeeper view at each send, so a topic spread
over a new set is used from the next message on, and a set whose brokers
changed is told so at once (:meth:`Producer._follow`).  Futures and
callbacks report the global partition.  With ``spill_dir`` each set has
a spill journal of its own, ``<spill_dir>/set-<n>``.  Transactions, local
and XA, are each bound to one replica set (:mod:`hpbroker.client.cluster_tx`).
"""

from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path
from typing import Sequence

from hpbroker.client.cluster_tx import ClusterTransactional
from hpbroker.client.partitioner import partition_for_key
from hpbroker.client.records import FutureRecordMetadata, RecordMetadata
from hpbroker.cluster.client_view import ClusterView, Snapshot
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.client")

_UNSUPPORTED = ("topic_partitions",)


class GlobalFuture(FutureRecordMetadata):
    """A set's future, reporting the global partition the message was routed to."""

    __slots__ = ("_g",)

    def __init__(self, inner: FutureRecordMetadata, g: int):
        self._batch = inner._batch
        self._index = inner._index
        self._g = g

    def result(self, timeout: float | None = None) -> RecordMetadata:
        md = FutureRecordMetadata.result(self, timeout)
        return RecordMetadata(md.topic, self._g, md.offset)


class ClusterProducer(ClusterTransactional):
    def __init__(self, url: str, *, zk_timeout_ms: int = 10_000, **producer_options):
        for name in _UNSUPPORTED:
            if producer_options.get(name) is not None:
                raise ValueError(f"{name}= is not supported with a zk:// URL yet (docs/client.md, "
                                 "\"Clusters: zk:// URLs\")")
        spill_dir = producer_options.pop("spill_dir", None)
        if spill_dir is None and producer_options.get("block_on_full") is False:
            raise ValueError("block_on_full=False needs a spill_dir: where send() puts what buffer_memory cannot hold")
        if spill_dir is None and producer_options.get("ordered"):
            raise ValueError("ordered=True needs a spill_dir: where messages wait, in order, while the broker is away")
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        self.url = url
        self.options = producer_options
        self.max_block = producer_options.get("max_block_ms", 60_000) / 1000.0
        self._lock = threading.Lock()
        self._producers: dict[int, object] = {}  # set -> Producer
        self._urls: dict[int, list[str]] = {}
        self._rr = itertools.count()
        self._closed = False
        self._view = ClusterView(url, timeout_s=zk_timeout_ms / 1000.0)
        self._view.add_listener(self._on_change)
        self._view.start()
        if self.spill_dir is not None:
            self._resume_spilled()

    def _resume_spilled(self) -> None:
        """A set whose journal holds messages from an earlier run gets its
        producer now, so they are re-sent without waiting for a new send there."""
        for d in sorted(self.spill_dir.glob("set-*")):
            rs = d.name[4:]
            if not rs.isdigit() or not any(d.iterdir()):
                continue
            try:
                self._producer(int(rs))
            except BrokerError as e:  # not registered now: its messages go once it is and something is sent there
                log.warning("producer: spill journal %s waits: %s", d, e)

    # -- routing ---------------------------------------------------------------------------

    def partitions(self, topic: str) -> list[tuple[int, int]]:
        """The topic's global partition list: (replica set, partition) by global number."""
        parts = self._view.wait_partitions(topic, self.max_block)  # a topic created a moment ago registers soon
        if not parts:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                              f"topic {topic!r} is not registered by any broker in ZooKeeper ({self.url}) "
                              f"within max_block_ms")
        return parts

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(len(self.partitions(topic))))

    def _route(self, topic: str, key: bytes | None, partition: int | None) -> tuple[int, int, int]:
        parts = self._view.snapshot.lists.get(topic)  # the common case: a topic already followed
        if not parts:
            parts = self.partitions(topic)
        n = len(parts)
        if partition is None:
            g = partition_for_key(key, n) if key is not None else next(self._rr) % n
        elif not 0 <= partition < n:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                              f"{topic!r} has {n} partitions across the cluster, no partition {partition}")
        else:
            g = partition
        rs, p = parts[g]
        return g, rs, p

    def _producer(self, rs: int):
        p = self._producers.get(rs)
        if p is not None:
            return p
        with self._lock:
            if self._closed:
                raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "producer is closed")
            p = self._producers.get(rs)
            if p is None:
                urls = self._set_urls(rs)
                from hpbroker.client.producer import Producer

                spill = {} if self.spill_dir is None else {"spill_dir": self.spill_dir / f"set-{rs}"}
                p = Producer(",".join(urls), **self.options, **spill)
                self._urls[rs] = urls
                self._producers[rs] = p
            return p

    def _set_urls(self, rs: int) -> list[str]:
        s = self._view.sets().get(rs)
        urls = [] if s is None else s.urls()
        if not urls:
            raise BrokerError(ErrorCode.NOT_LEADER, f"replica set {rs} has no broker registered in ZooKeeper")
        return urls

    def _on_change(self, snap: Snapshot) -> None:
        """A set's brokers changed: its producer asks them which one leads (refresher thread)."""
        with self._lock:
            for rs, p in self._producers.items():
                s = snap.sets.get(rs)
                urls = [] if s is None else s.urls()
                if urls and urls != self._urls.get(rs):
                    self._urls[rs] = urls
                    p._follow(urls)

    # -- the Producer's calls ---------------------------------------------------------------

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
             timestamp_ms: int | None = None, callback=None, *, headers=None) -> FutureRecordMetadata:
        if self._xa_branch is not None:  # between tpc_begin and its end: the message joins the XA branch
            return self._xa_branch.send(topic, value, key, partition, headers=headers)
        parts = self._view.snapshot.lists.get(topic)
        if parts and partition is None:  # the common case, inline (per message)
            n = len(parts)
            g = partition_for_key(key, n) if key is not None else next(self._rr) % n
            rs, p = parts[g]
        else:
            g, rs, p = self._route(topic, key, partition)
        producer = self._producers.get(rs) or self._producer(rs)
        fut = GlobalFuture(producer.send(topic, value, key, p, timestamp_ms, None, headers=headers), g)
        if callback is not None:
            _attach(fut, callback)
        return fut

    def send_batch(self, topic: str, values: Sequence[bytes], partition: int | None = None, keys=None,
                   timestamp_ms: int | None = None, callback=None, *, headers=None) -> FutureRecordMetadata:
        if self._xa_branch is not None:
            return self._xa_branch.send_batch(topic, values, partition, keys, headers=headers)
        g, rs, p = self._route(topic, None, partition)
        fut = GlobalFuture(self._producer(rs).send_batch(topic, values, p, keys, timestamp_ms, headers=headers), g)
        if callback is not None:
            _attach(fut, callback)
        return fut

    def flush(self, timeout: float | None = None) -> None:
        for p in list(self._producers.values()):
            p.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            producers = list(self._producers.values())
        try:
            for p in producers:
                p.close(timeout)
        finally:
            self._view.close()

    def metrics(self) -> dict:
        out: dict = {}
        for rs, p in sorted(self._producers.items()):
            for k, v in p.metrics().items():
                out[k] = out.get(k, 0) + v if isinstance(v, (int, float)) else v
        out["replica_sets"] = sorted(self._producers)
        return out

    def __enter__(self) -> "ClusterProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attach(fut: FutureRecordMetadata, callback) -> None:
    def done(f):
        exc = f.exception()
        callback(None if exc else f.result(), exc)

    fut.add_done_callback(done)
