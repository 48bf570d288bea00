"""``ClusterConsumer``: what ``Consumer("zk://...")`` returns (docs/client.md, "Clusters: zk:// URLs").

It reads a topic's *global partition list* (:mod:`hpbroker.cluster.client_view`)
with one ordinary :class:`~hpbroker.client.consumer.Consumer` per (topic,
replica set), each given that set's master and slave URLs and that set's
partitions (so each follows a promotion within its set by itself), and
hands out their messages with ``partition`` set to the global number.

* no ``group_id``: every partition of the topics, following the list as
  sets are added;
* ``group_id``: a member of a group whose members and owners are ZooKeeper
  nodes (:mod:`hpbroker.cluster.client_group`, docs/cluster.md, "Consumer
  groups across brokers"); offsets in a store (:mod:`hpbroker.client.cluster_offsets`),
  MetaQ's ZooKeeper path by default (``/meta/consumers/<g>/offsets/<topic>/<set>-<p>``),
  or each set's master (``offset_store="broker"``);
* ``group_id`` and ``broadcast=True``: MetaQ's broadcast consumption, every
  partition of the topics in every instance, offsets kept under
  ``<group>-<instance>`` (the local file store by default, as MetaQ's
  LocalOffsetStorage).

Single-threaded like Consumer: the caller's thread owns every socket; the
view's and the member's threads only touch ZooKeeper and wake it.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, Sequence

from hpbroker.client.cluster_offsets import ClusterOffsets
from hpbroker.client.cluster_positions import ClusterPositions
from hpbroker.client.consumer import default_instance_name
from hpbroker.client.records import Message, RawBatches, TopicPartition
from hpbroker.client.set_consumers import SetConsumers
from hpbroker.client.waker import Waker
from hpbroker.cluster.client_group import GroupMember, Slot, new_member_id
from hpbroker.cluster.client_view import ClusterView
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.consumer")

_UNSUPPORTED = ("max_poll_interval_ms", "assignor")

RETRY_S = 1.0  # how soon offsets that could not be read (their set's store unreachable) are read again


class ClusterConsumer(ClusterPositions):
    def __init__(
        self,
        url: str,
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
        consumer_timeout_ms: float | None = None,
        **options,
    ):
        for name in _UNSUPPORTED:
            if options.pop(name, None) not in (None, False, "", "range"):
                raise ValueError(f"{name}= is not supported with a zk:// URL (docs/client.md, \"Clusters: zk:// URLs\")")
        names = [topics] if isinstance(topics, str) else list(topics or [])
        if topic is not None:
            names.append(topic)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a Consumer needs distinct topics, got {names}")
        if partitions is not None and len(names) != 1:
            raise ValueError("partitions= picks partitions of one topic; with several topics, leave it out")
        if broadcast and not group_id:
            raise ValueError("broadcast=True needs a group_id (the offsets are kept under <group_id>-<instance>)")
        self.url = url
        self.topics = names
        self.topic = names[0]
        self.group_id = group_id
        self.broadcast = bool(broadcast)
        self.auto_offset_reset = auto_offset_reset
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.consumer_timeout_ms = consumer_timeout_ms
        self.enable_auto_commit = bool(group_id) and enable_auto_commit
        self.auto_commit_interval = auto_commit_interval_ms / 1000.0
        self.instance_name = instance_name or default_instance_name()
        self._on_assign = on_assign or getattr(listener, "on_partitions_assigned", None)
        self._on_revoke = on_revoke or getattr(listener, "on_partitions_revoked", None)
        self._on_lost = on_lost or getattr(listener, "on_partitions_lost", None)
        self._slots: set[Slot] = set()  # what this consumer should fetch (its sets' consumers fetch what they can)
        self._gindex: dict[Slot, int] = {}
        self._seen_version = -1
        self._committed: dict[Slot, int] = {}
        self._deferred: dict[Slot, float] = {}  # slots whose offsets could not be read -> when to try again
        self._next_auto_commit = time.monotonic() + self.auto_commit_interval
        self._paused = False
        self._gen = 0
        self._closed = False
        self._stopping = False
        self.bootstrap = url  # what the handler loop's dead-letter producer is given
        self.request_timeout_ms = options.get("request_timeout_ms", 30_000)
        self._offsets: ClusterOffsets | None = None
        self._member: GroupMember | None = None
        self._waker = Waker()
        self._view = ClusterView(url, timeout_s=session_timeout_ms / 1000.0)
        self._sets = SetConsumers(self._view, dict(options, auto_offset_reset=auto_offset_reset,
                                                   fetch_max_wait_ms=fetch_max_wait_ms))
        self._view.add_listener(lambda _s: self._waker.wake())
        try:
            self._view.start()
            for t in names:
                if not self._view.wait_partitions(t, options.get("connect_timeout_ms", 10_000) / 1000.0):
                    raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                      f"topic {t!r} is not registered by any broker in ZooKeeper ({url})")
            self._reindex()
            if group_id:
                from hpbroker.client.transport import client_curve

                spec = offset_store or ("file" if broadcast else None)
                storage = f"{group_id}-{self.instance_name}" if broadcast else group_id
                curve = client_curve(options.get("curve_secret_key_file"), options.get("broker_public_key"))
                self._offsets = ClusterOffsets(self._view, storage, spec, offset_store_path,
                                               offset_store_connection, offset_store_hosts,
                                               timeout_ms=self.request_timeout_ms, curve=curve)
            if partitions is not None:
                parts = self._view.partitions(self.topic)
                wanted = set()
                for g in partitions:
                    if not 0 <= g < len(parts):
                        raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                          f"{self.topic!r} has {len(parts)} partitions across the cluster, no {g}")
                    wanted.add((self.topic, *parts[g]))
                self._fixed = frozenset(wanted)
            else:
                self._fixed = None
            if group_id and not broadcast and partitions is None:
                self._member = GroupMember(self._view, group_id, names, new_member_id(self.instance_name),
                                           on_change=self._waker.wake)
                self._member.start()
            else:
                self._apply(self._fixed if self._fixed is not None else self._all_slots())
        except BaseException:
            self._close_quietly()
            raise

    # -- the layout --------------------------------------------------------------------------

    def partitions(self, topic: str | None = None) -> list[tuple[int, int]]:
        """The global partition list of ``topic``: (replica set, partition) by global number."""
        return self._view.partitions(topic or self.topic)

    @property
    def member_id(self) -> str | None:
        return None if self._member is None else self._member.member_id

    def _all_slots(self) -> set[Slot]:
        return {(t, rs, p) for t in self.topics for rs, p in self._view.partitions(t)}

    def _reindex(self) -> None:
        snap = self._view.snapshot
        self._seen_version = snap.version
        self._gindex = {(t, rs, p): g for t in self.topics for g, (rs, p) in enumerate(snap.partitions(t))}
        self._sets.follow(snap)

    def _slot(self, partition) -> Slot:
        """A global partition (an int of the first topic, or a TopicPartition) -> its slot."""
        if isinstance(partition, tuple):
            t, g = partition[0], int(partition[1])
        else:
            t, g = self.topic, int(partition)
        parts = self._view.partitions(t)
        if not 0 <= g < len(parts):
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{t!r} has no partition {g} across the cluster")
        return (t, *parts[g])

    def _key(self, slot: Slot):
        g = self._gindex.get(slot, -1)
        return g if len(self.topics) == 1 else TopicPartition(slot[0], g)

    # -- assignment ----------------------------------------------------------------------------

    def _apply(self, slots) -> None:
        """Fetch exactly ``slots`` from now on (positions of kept ones kept)."""
        self._slots = set(slots)
        for d in (self._committed, self._deferred):
            for slot in [s for s in d if s not in self._slots]:
                del d[slot]
        self._sync_subs()

    def _sync_subs(self) -> None:
        """Place ``_slots`` on the per-set consumers; the newly placed start
        at their committed offsets.  A set whose offsets cannot be read now
        (its store, or with the ``broker`` store its master, unreachable) has
        its new slots left out and tried again ``RETRY_S`` later, rather
        than fetched from ``auto_offset_reset``."""
        now = time.monotonic()
        want = {s for s in self._slots if self._deferred.get(s, 0.0) <= now}
        new = self._sets.place(want)
        if self._offsets is None or not new:
            return
        got, failed = self._offsets.load_sets(new)
        for slot, off in got.items():
            self._sets.sub(slot).seek(slot[2], off)
            self._committed[slot] = off
        if failed:
            later = {s for s in new if s[1] in failed}
            for rs, e in failed.items():
                log.warning("group %s: the committed offsets of replica set %d cannot be read (%s); "
                            "its new partitions wait %g s", self.group_id, rs, e, RETRY_S)
            for s in later:
                self._deferred[s] = now + RETRY_S
            self._sets.place(want - later)

    def _waiting(self) -> bool:
        """Every slot not placed waits for its offsets to be read again (nothing to do yet)."""
        if not self._deferred:
            return False
        now = time.monotonic()
        return all(self._deferred.get(s, 0.0) > now for s in self._slots - self._sets.placed)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(s[0], self._gindex.get(s, -1)) for s in self._slots}

    def _step(self) -> None:
        if self._view.snapshot.version != self._seen_version:
            self._reindex()
            if self._member is None and self._fixed is None:
                self._apply(self._all_slots())
        if self._member is not None:
            self._group_step()
        if self._sets.placed != self._slots and not self._waiting():
            self._sync_subs()
        self._auto_commit(time.monotonic())

    def _group_step(self) -> None:
        m = self._member
        gen, paused, keep, give_up = m.take()
        self._paused = paused
        if gen != self._gen:  # the session expired: its owner nodes are gone, others own these now
            self._gen = gen
            lost = set(self._slots)
            if lost:
                log.warning("group %s: ZooKeeper session lost: %d partitions dropped", self.group_id, len(lost))
                self._apply(set())
                if self._on_lost is not None:
                    self._on_lost({TopicPartition(s[0], self._gindex.get(s, -1)) for s in lost})
        revoked = self._slots & give_up
        if revoked:
            if self.enable_auto_commit:
                try:
                    self._commit_slots(self._changed({s: o for s, o in self._sets.positions().items()
                                                      if s in revoked}), check=False)
                except Exception as e:
                    log.warning("group %s: commit before giving up %d partitions failed: %s",
                                self.group_id, len(revoked), e)
            if self._on_revoke is not None:
                self._on_revoke({TopicPartition(s[0], self._gindex.get(s, -1)) for s in revoked})
            self._apply(self._slots - revoked)
        if give_up:
            m.release(give_up)
        added = keep - self._slots
        if added:
            self._apply(self._slots | added)
            if self._on_assign is not None:
                self._on_assign({TopicPartition(s[0], self._gindex.get(s, -1)) for s in added})

    # -- reading ----------------------------------------------------------------------------------

    def poll(self, timeout_ms: float = 0, max_records: int = 500) -> list[Message]:
        """Up to ``max_records`` messages from every set, ``partition`` the global number."""
        def take(key, sub, room, out):
            t, rs = key
            for m in sub.poll(0, room):
                out.append(m._replace(partition=self._gindex.get((t, rs, m.partition), -1)))

        return self._gather(timeout_ms, max_records, take, len)

    def poll_batches(self, timeout_ms: float = 0, max_bytes: int = 64 << 20) -> list[RawBatches]:
        """Consumer.poll_batches over every set: whole batches per partition, ``partition`` the global number."""
        def take(key, sub, room, out):
            t, rs = key
            for rb in sub.poll_batches(0, room):
                out.append(rb._replace(partition=self._gindex.get((t, rs, rb.partition), -1)))

        return self._gather(timeout_ms, max_bytes, take, lambda out: sum(len(rb.data) for rb in out))

    def _gather(self, timeout_ms: float, limit: int, take, size) -> list:
        """What the per-set consumers have (``take(key, sub, room, out)``), up
        to ``limit`` by ``size(out)``, waiting up to ``timeout_ms`` for the first."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            self._waker.drain()
            self._step()
            out: list = []
            if not self._paused:
                for key, sub in self._sets.rotation():
                    room = limit - size(out)
                    if room <= 0:
                        break
                    sub._t.poll(0)  # take the replies that arrived
                    take(key, sub, room, out)
            if out or self._stopping:
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            self._sets.wait(min(left, 0.2), self._waker.rfd, sockets=not self._paused)

    def run(self, handler, *, batch: bool = False, max_retries: int = 5, on_failure: str = "dlq",
            retry_backoff_ms: int = 100, recover_interval_ms: int = 300_000, recover_dir: str | None = None,
            poll_timeout_ms: int = 500):
        """Consumer.run (docs/consumer.md, "Handler mode") over every set.
        With ``on_failure="dlq"`` the dead-letter topic ``<topic>.<group>.dlq``
        must exist in the cluster (``hpbroker topics create ... --zookeeper``):
        it is written through a zk:// producer."""
        from hpbroker.client.handler import HandlerLoop

        return HandlerLoop(self, handler, batch=batch, max_retries=max_retries, on_failure=on_failure,
                           retry_backoff_ms=retry_backoff_ms, recover_interval_ms=recover_interval_ms,
                           recover_dir=recover_dir, poll_timeout_ms=poll_timeout_ms).run()

    def stop(self) -> None:
        """Make :meth:`run` return after the message in hand (any thread)."""
        self._stopping = True
        self._waker.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def __iter__(self) -> Iterator[Message]:
        idle_since = time.monotonic()
        while True:
            msgs = self.poll(timeout_ms=self.fetch_max_wait_ms or 100, max_records=1000)
            if msgs:
                yield from msgs
                idle_since = time.monotonic()
            elif self.consumer_timeout_ms is not None and (time.monotonic() - idle_since) * 1000 >= self.consumer_timeout_ms:
                return

    def close(self, autocommit: bool = True) -> None:
        """Commit (with auto-commit on), give up every partition at once, leave the group."""
        if self._closed:
            return
        try:
            if autocommit and self.enable_auto_commit and not self._paused:
                try:
                    self.commit()
                except Exception as e:
                    log.warning("group %s: final commit failed: %s", self.group_id, e)
        finally:
            self._close_quietly()

    def _close_quietly(self) -> None:
        self._closed = True
        self._sets.close()
        if self._member is not None:
            self._member.close()
        if self._offsets is not None:
            self._offsets.close()
        self._view.close()
        self._waker.close()

    def __enter__(self) -> "ClusterConsumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
