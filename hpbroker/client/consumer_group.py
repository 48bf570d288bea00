"""A Consumer in a group: commits, and what its membership decides.

:class:`~hpbroker.client.consumer.Consumer` inherits this part
(docs/consumer.md).  ``commit``, ``commit_async``, ``committed`` and
auto-commit store positions through the group's offset store
(:mod:`~hpbroker.client.group_offsets`); each ``poll`` applies what the
heartbeat thread (:mod:`~hpbroker.client.membership`) learned: partitions
revoked are committed first (with auto-commit) and handed to
``on_revoke``, partitions added start at their committed offsets and go
to ``on_assign``, and a lost membership drops everything (``on_lost``).
"""

from __future__ import annotations

import logging
import time

from hpbroker.client.cluster import topic_partitions
from hpbroker.client.fetcher import Part
from hpbroker.client.group_offsets import GroupOffsets
from hpbroker.client.records import TopicPartition
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.consumer")

TP = tuple[str, int]


class GroupSide:
    """The Consumer's commits and rebalances (it provides ``_f``,
    ``_offsets``, ``_membership``, ``_committed``, ``group_id``,
    ``enable_auto_commit``, the listeners, ``partition_counts``, ``_t``,
    ``_tp``, ``_key`` and ``_start_at_committed``)."""

    # -- commits ----------------------------------------------------------------------------

    def _need_group(self) -> GroupOffsets:
        if self._offsets is None:
            raise RuntimeError("commit needs a group_id: a consumer without a group has no committed offsets")
        return self._offsets

    def _positions(self) -> dict[TP, int]:
        return {tp: part.position for tp, part in self._f.parts.items() if part.position is not None}

    def _explicit(self, offsets) -> dict[TP, int]:
        out = {self._tp(p): int(o) for p, o in offsets.items()}
        if self._membership is not None:
            gone = sorted(tp for tp in out if tp not in self._f.parts)
            if gone:
                raise BrokerError(ErrorCode.FENCED_MEMBER_EPOCH,
                                  f"{', '.join(f'{t}/{p}' for t, p in gone)} not assigned to this member any more "
                                  "(revoked, or lost with its group membership): its new owner commits it")
        return out

    def commit(self, offsets: dict | None = None) -> None:
        """Commit ``offsets`` ({partition: next offset to read}), or the
        positions of every assigned partition: durable when it returns.
        Raises BrokerError: FENCED_MEMBER_EPOCH or UNKNOWN_MEMBER_ID when
        this member no longer owns a partition it names (it was moved)."""
        g = self._need_group()
        todo = self._explicit(offsets) if offsets is not None else self._changed(self._positions())
        g.commit(todo)
        self._committed.update(todo)

    def commit_async(self, callback=None, offsets: dict | None = None) -> None:
        """Send the commit and return; ``callback(offsets, exception)`` runs
        in a later ``poll`` (exception None on success)."""
        g = self._need_group()
        todo = self._explicit(offsets) if offsets is not None else self._changed(self._positions())

        def done(offs, err):
            if err is None:
                self._committed.update(offs)
            elif callback is None:
                log.warning("group %s: commit of %d partitions failed: %s", self.group_id, len(offs), err)
            if callback is not None:
                callback({self._key(tp): o for tp, o in offs.items()}, err)

        g.commit_async(todo, done)

    def committed(self, partition) -> int | None:
        """The committed offset of ``partition`` (read from the store), or None."""
        tp = self._tp(partition)
        return self._need_group().load([tp]).get(tp)

    def _changed(self, positions: dict[TP, int]) -> dict[TP, int]:
        return {tp: o for tp, o in positions.items() if self._committed.get(tp) != o}

    def _auto_commit(self, now: float) -> None:
        if not self.enable_auto_commit or now < self._next_auto_commit:
            return
        self._next_auto_commit = now + self.auto_commit_interval
        if self._changed(self._positions()):
            self.commit_async()

    # -- the group ----------------------------------------------------------------------------

    def _group_step(self) -> None:
        """Apply what the heartbeat thread learned, then auto-commit."""
        ms = self._membership
        if ms is not None:
            ms.touch()
            lost, target = ms.take()
            if lost:
                self._lose(lost)
            if target is not None:
                self._rebalance(target)
        self._auto_commit(time.monotonic())

    def _lose(self, reason: str) -> None:
        gone = set(self._f.parts)
        for tp in gone:
            self._f.drop(tp)
            self._committed.pop(tp, None)
        self._membership.confirm(frozenset())
        if gone and self._on_lost is not None:
            self._on_lost({TopicPartition(*tp) for tp in gone})

    def _rebalance(self, target: frozenset[TP]) -> None:
        current = set(self._f.parts)
        revoked = current - target
        added = target - current
        if revoked:
            if self.enable_auto_commit:
                try:
                    self.commit({TopicPartition(*tp): self._f.parts[tp].position for tp in revoked
                                 if self._f.parts[tp].position is not None
                                 and self._committed.get(tp) != self._f.parts[tp].position})
                except BrokerError as e:
                    log.warning("group %s: commit before giving up %d partitions failed: %s",
                                self.group_id, len(revoked), e)
            if self._on_revoke is not None:
                self._on_revoke({TopicPartition(*tp) for tp in revoked})
            for tp in revoked:
                self._f.drop(tp)
                self._committed.pop(tp, None)
        if added:
            for t, _ in added:
                if t not in self.partition_counts:
                    self.partition_counts[t] = topic_partitions(self._t.metadata([t]), t)
            for tp in added:
                self._f.parts[tp] = Part(*tp)
            self._start_at_committed(sorted(added))
        self._membership.confirm(frozenset(self._f.parts))
        if added and self._on_assign is not None:
            self._on_assign({TopicPartition(*tp) for tp in added})
