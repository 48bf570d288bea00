"""``Consumer``: long-poll fetches of one or more topics, alone or in a group.

Modes (docs/consumer.md):

* **manual**: no ``group_id``; every partition of the topics (or
  ``partitions=`` of a single topic), positions from ``auto_offset_reset``,
  nothing committed;
* **clustering** (``group_id``): the broker's coordinator gives each member
  its partitions (:mod:`~hpbroker.client.membership`, a heartbeat thread);
  positions start at the committed offsets; ``commit``/``commit_async`` and
  auto-commit store them (:mod:`~hpbroker.client.group_offsets`); the
  commits and rebalances are :mod:`~hpbroker.client.consumer_group`'s;
* **broadcast** (``group_id`` and ``broadcast=True``): every instance reads
  every partition and keeps its own offsets under ``<group>-<instance>``
  (MetaQ's naming), in a local file unless another store is named;
* ``group_id`` with ``partitions=``: manual assignment with committed
  offsets (commits are refused while the group has live members).

Single-threaded like kafka-python's consumer: the caller's thread owns the
sockets, and listeners (``on_assign``, ``on_revoke``, ``on_lost``) run on it,
inside :meth:`poll`.  Delivery is at least once: auto-commit (every
``auto_commit_interval_ms``, at the start of a ``poll``) commits only the
positions after what earlier ``poll`` calls returned, and a partition that
moves is committed before it is given up.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from typing import Iterable, Iterator, Sequence

from hpbroker import batch
from hpbroker.client.cluster import topic_partitions
from hpbroker.client.consumer_group import TP, GroupSide
from hpbroker.client.fetcher import Fetcher, Part
from hpbroker.client.group_offsets import GroupOffsets
from hpbroker.client.membership import Membership
from hpbroker.client.records import Message, RawBatches, TopicPartition
from hpbroker.client.transport import Transport, client_curve
from hpbroker.client.waker import Waker
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.filters import Filter
from hpbroker.protocol.messages import EARLIEST, LATEST, ListOffsets

log = logging.getLogger("hpbroker.consumer")



def default_instance_name() -> str:
    """This host's name with everything but ``[A-Za-z0-9_]`` as ``-`` (MetaQ
    used the local IP with ``.`` and ``:`` replaced by ``-``)."""
    return re.sub(r"[^A-Za-z0-9_]", "-", socket.gethostname()) or "localhost"


class Consumer(GroupSide):
    def __new__(cls, bootstrap: str = "tcp://127.0.0.1:7600", *args, **kwargs):
        """``Consumer("zk://HOST:PORT/chroot", ...)`` is a
        :class:`~hpbroker.client.cluster_consumer.ClusterConsumer`: brokers
        found in ZooKeeper, groups kept there (docs/client.md, "Clusters:
        zk:// URLs")."""
        if cls is Consumer and isinstance(bootstrap, str) and bootstrap.strip().startswith("zk://"):
            from hpbroker.client.cluster_consumer import ClusterConsumer

            return ClusterConsumer(bootstrap, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        bootstrap: str = "tcp://127.0.0.1:7600",
        topics: str | Sequence[str] | None = None,
        *,
        topic: str | None = None,
        partitions: Iterable[int] | None = None,
        group_id: str | None = None,
        broadcast: bool = False,
        instance_name: str | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        assignor: str = "",
        listener=None,
        on_assign=None,
        on_revoke=None,
        on_lost=None,
        offset_store=None,
        offset_store_path: str | None = None,
        offset_store_connection=None,
        offset_store_hosts: str | None = None,
        auto_offset_reset: str = "latest",
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 1 << 20,
        fetch_min_bytes: int = 1,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 10_000,
        consumer_timeout_ms: float | None = None,
        max_reply_bytes: int = 64 << 20,
        filter=None,
        curve_secret_key_file: str | None = None,
        broker_public_key: str | bytes | None = None,
        check_crcs: bool = True,
    ):
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise ValueError("auto_offset_reset must be 'earliest', 'latest' or 'none'")
        names = [topics] if isinstance(topics, str) else list(topics or [])
        if topic is not None:
            names.append(topic)
        if not names:
            raise ValueError("a Consumer needs a topic (or a list of topics)")
        if len(set(names)) != len(names):
            raise ValueError(f"topics named twice: {names}")
        if partitions is not None and len(names) != 1:
            raise ValueError("partitions= picks partitions of one topic; with several topics, leave it out")
        if filter is not None:
            filter = Filter.of(filter)  # a bad one is a ValueError (FilterError) before any socket opens
        if broadcast and not group_id:
            raise ValueError("broadcast=True needs a group_id (the offsets are kept under <group_id>-<instance>)")
        self.bootstrap = bootstrap
        self.topics = names
        self.topic = names[0]  # the single-topic shortcut: int partition arguments mean this topic's
        self.group_id = group_id
        self.broadcast = broadcast
        self.auto_offset_reset = auto_offset_reset
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.consumer_timeout_ms = consumer_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.request_timeout_ms = request_timeout_ms
        self.enable_auto_commit = bool(group_id) and enable_auto_commit
        self.auto_commit_interval = auto_commit_interval_ms / 1000.0
        self._on_assign = on_assign or getattr(listener, "on_partitions_assigned", None)
        self._on_revoke = on_revoke or getattr(listener, "on_partitions_revoked", None)
        self._on_lost = on_lost or getattr(listener, "on_partitions_lost", None)
        curve = client_curve(curve_secret_key_file, broker_public_key)
        self._t = Transport(bootstrap, request_timeout_ms=request_timeout_ms, max_reply_bytes=max_reply_bytes,
                            readers=True, curve=curve)
        # filter: a server-side filter, a hpbroker.Filter or a dict (docs/consumer.md, "Filters")
        self._f = Fetcher(self._t, max_wait_ms=fetch_max_wait_ms, max_bytes=fetch_max_bytes, min_bytes=fetch_min_bytes,
                          reset_needed=self._reset, decode_headers=batch.decode_headers, filter=filter,
                          check_crcs=check_crcs)
        self._waker: Waker | None = None
        self._membership: Membership | None = None
        self._offsets: GroupOffsets | None = None
        self._committed: dict[TP, int] = {}  # what this consumer last committed (skip unchanged commits)
        self._next_auto_commit = time.monotonic() + self.auto_commit_interval
        self._stopping = False
        self.instance_name = instance_name or default_instance_name()
        self.partition_counts: dict[str, int] = {}
        try:
            md = self._t.metadata(names, timeout_ms=connect_timeout_ms)
            for name in names:
                self.partition_counts[name] = topic_partitions(md, name)
            self.partition_count = self.partition_counts[self.topic]
            if group_id:
                self._offsets = self._make_offsets(group_id, offset_store, offset_store_path, offset_store_connection,
                                                   offset_store_hosts)
            if group_id and not broadcast and partitions is None:
                self._waker = Waker()
                self._t.poller.register(self._waker.rfd, 1)  # zmq.POLLIN
                self._membership = Membership(bootstrap, group_id, names, session_timeout_ms=session_timeout_ms,
                                              max_poll_interval_ms=max_poll_interval_ms, assignor=assignor,
                                              instance_id=self.instance_name, request_timeout_ms=request_timeout_ms,
                                              on_change=self._waker.wake, curve=curve)
                self._offsets.membership = self._membership
                self._membership.start()
            elif partitions is not None:
                self._assign([(self.topic, p) for p in partitions])
            else:
                self._assign([(t, p) for t in names for p in range(self.partition_counts[t])])
        except BaseException:
            self._close_quietly()
            raise

    def _make_offsets(self, group_id, spec, path, connection, hosts) -> GroupOffsets:
        if spec is None:
            spec = "file" if self.broadcast else "broker"
        storage = f"{group_id}-{self.instance_name}" if self.broadcast else group_id
        if spec == "broker":
            return GroupOffsets(self._t, group_id, storage_group=storage, timeout_ms=self.request_timeout_ms)
        from hpbroker.client.stores import resolve_store

        store = resolve_store(spec, path=path, connection=connection, hosts=hosts)  # options left None are ignored
        return GroupOffsets(self._t, group_id, store=store, storage_group=storage, timeout_ms=self.request_timeout_ms)

    # -- assignment and positions -----------------------------------------------------------

    def _tp(self, partition) -> TP:
        if isinstance(partition, tuple):
            return (partition[0], int(partition[1]))
        return (self.topic, int(partition))

    def assign(self, partitions: Iterable) -> None:
        """Consume exactly these partitions (ints of the first topic, or
        TopicPartitions); positions of partitions kept are kept.  Not with
        group membership: the coordinator assigns."""
        if self._membership is not None:
            raise RuntimeError("this consumer is a group member: its partitions come from the group's coordinator")
        self._assign([self._tp(p) for p in partitions])

    def _assign(self, tps: list[TP]) -> None:
        for t, p in tps:
            n = self.partition_counts.get(t)
            if n is None or not 0 <= p < n:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{t!r} has no partition {p}")
        for tp in [tp for tp in self._f.parts if tp not in set(tps)]:
            self._f.drop(tp)
        new = [tp for tp in tps if tp not in self._f.parts]
        for tp in new:
            self._f.parts[tp] = Part(*tp)
        if self._offsets is not None and new:
            self._start_at_committed(new)

    def _start_at_committed(self, tps: list[TP]) -> None:
        committed = self._offsets.load(tps)
        for tp in tps:
            if tp in committed:
                self._f.move(self._f.parts[tp], committed[tp])
                self._committed[tp] = committed[tp]

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(*tp) for tp in self._f.parts}

    def position(self, partition) -> int:
        part = self._part(partition)
        if part.position is None:
            self._reset(part)
        return part.position

    def seek(self, partition, offset: int) -> None:
        part = self._part(partition)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self._f.move(part, offset)

    def seek_to_beginning(self, *partitions) -> None:
        self._seek_spec(partitions, EARLIEST)

    def seek_to_end(self, *partitions) -> None:
        self._seek_spec(partitions, LATEST)

    def offsets_for_times(self, timestamps: dict) -> dict:
        """{partition: first offset whose batch has max_timestamp >= ts}
        (the high watermark when there is none)."""
        return {p: self._list_offset(self._tp(p), ts) for p, ts in timestamps.items()}

    def beginning_offsets(self, partitions: Iterable | None = None) -> dict:
        return self._offsets_at(partitions, EARLIEST)

    def end_offsets(self, partitions: Iterable | None = None) -> dict:
        return self._offsets_at(partitions, LATEST)

    def _offsets_at(self, partitions, spec) -> dict:
        if partitions is None:
            return {self._key(tp): self._list_offset(tp, spec) for tp in self._f.parts}
        return {p: self._list_offset(self._tp(p), spec) for p in partitions}

    def _key(self, tp: TP):
        """How results are keyed: an int for the single-topic consumer, as before; else a TopicPartition."""
        return tp[1] if len(self.topics) == 1 else TopicPartition(*tp)

    # -- reading ----------------------------------------------------------------------------------

    def poll(self, timeout_ms: float = 0, max_records: int = 500) -> list[Message]:
        """Up to ``max_records`` messages, waiting up to ``timeout_ms`` for
        the first ones; [] when nothing arrived in time."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            self._group_step()
            self._f.raise_errors()  # one left by the last poll, which had messages to return first
            out: list[Message] = []
            for part in self._f.rotation():
                if len(out) >= max_records:
                    break
                self._f.take_messages(part, max_records - len(out), out)
            if out:
                self._f.fetch_all(self.connect_timeout_ms)
                return out
            if not self._wait(deadline):
                return out

    def poll_batches(self, timeout_ms: float = 0, max_bytes: int = 64 << 20) -> list[RawBatches]:
        """Raw fast path: whole batches as received, per partition, with no
        per-record Python work (one ``RawBatches`` per partition with data;
        the total is capped by ``max_bytes`` but at least one batch)."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            self._group_step()
            self._f.raise_errors()
            out: list[RawBatches] = []
            budget = max_bytes
            for part in self._f.rotation():
                if budget <= 0 and out:
                    break
                rb = self._f.take_raw(part, budget if out else max(budget, 1))
                if rb is not None:
                    out.append(rb)
                    budget -= len(rb.data)
            if out:
                self._f.fetch_all(self.connect_timeout_ms)
                return out
            if not self._wait(deadline):
                return out

    def __iter__(self) -> Iterator[Message]:
        """Messages forever (or until ``consumer_timeout_ms`` passes with none)."""
        idle_since = time.monotonic()
        while True:
            msgs = self.poll(timeout_ms=self.fetch_max_wait_ms or 100, max_records=1000)
            if msgs:
                yield from msgs
                idle_since = time.monotonic()
            elif self.consumer_timeout_ms is not None and (time.monotonic() - idle_since) * 1000 >= self.consumer_timeout_ms:
                return

    def run(self, handler, *, batch: bool = False, max_retries: int = 5, on_failure: str = "dlq",
            retry_backoff_ms: int = 100, recover_interval_ms: int = 300_000, recover_dir: str | None = None,
            poll_timeout_ms: int = 500):
        """Drive ``handler`` until :meth:`stop` (docs/consumer.md, "Handler mode").

        ``handler(message)`` (or ``handler(messages)`` with ``batch=True``)
        is retried ``max_retries`` times with backoff; a message it still
        fails on goes to ``on_failure``: ``"dlq"`` (the topic
        ``<topic>.<group>.dlq``), ``"local"`` (a journal on this machine,
        redelivered every ``recover_interval_ms``) or ``"drop"``.  The
        offset moves past a failed message only once it is safely there.
        Returns the run's counters."""
        from hpbroker.client.handler import HandlerLoop

        loop = HandlerLoop(self, handler, batch=batch, max_retries=max_retries, on_failure=on_failure,
                           retry_backoff_ms=retry_backoff_ms, recover_interval_ms=recover_interval_ms,
                           recover_dir=recover_dir, poll_timeout_ms=poll_timeout_ms)
        return loop.run()

    def stop(self) -> None:
        """Make :meth:`run` return after the message in hand (any thread, or a signal handler)."""
        self._stopping = True
        if self._waker is None:
            self._waker = Waker()
            self._t.poller.register(self._waker.rfd, 1)
        self._waker.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def close(self, autocommit: bool = True) -> None:
        """Commit (with auto-commit on), leave the group (its partitions move
        at once), and close the sockets."""
        try:
            if autocommit and self.enable_auto_commit and not self._t.closed:
                try:
                    self.commit()
                except BrokerError as e:
                    log.warning("group %s: final commit failed: %s", self.group_id, e)
        finally:
            self._close_quietly()

    def _close_quietly(self) -> None:
        if self._membership is not None:
            self._membership.close(leave=True)
        if self._offsets is not None:
            self._offsets.close()
        self._t.close()
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _part(self, partition) -> Part:
        tp = self._tp(partition)
        try:
            return self._f.parts[tp]
        except KeyError:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {tp[0]}/{tp[1]} is not assigned") from None

    def _list_offset(self, tp: TP, spec: int) -> int:
        req = ListOffsets(id=self._t.next_id(), topic=tp[0], partition=tp[1], spec=spec)
        rep, _ = self._t.call(self._t.endpoint_for(tp[1]), req)
        return rep.offset

    def _seek_spec(self, partitions, spec: int) -> None:
        for p in partitions or list(self._f.parts):
            part = self._part(p)
            self._f.move(part, self._list_offset((part.topic, part.partition), spec))

    def _reset(self, part: Part) -> None:
        if self.auto_offset_reset == "none":
            raise BrokerError(ErrorCode.OFFSET_OUT_OF_RANGE,
                              f"no position for {part.topic}/{part.partition} and auto_offset_reset='none'")
        spec = EARLIEST if self.auto_offset_reset == "earliest" else LATEST
        self._f.move(part, self._list_offset((part.topic, part.partition), spec))

    def _wait(self, deadline: float) -> bool:
        """Make sure fetches are out, then wait for replies (or a wake-up);
        False once the deadline passed with nothing buffered."""
        self._f.fetch_all(self.connect_timeout_ms)
        self._f.raise_errors()
        if self._stopping:
            return False
        left = (deadline - time.monotonic()) * 1000.0
        if left <= 0:
            return False
        fired = self._t.poll(left)
        if fired and self._waker is not None:
            self._waker.drain()
        return True
