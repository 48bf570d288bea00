"""A ClusterConsumer's commits and positions, by global partition.

:class:`~hpbroker.client.cluster_consumer.ClusterConsumer` inherits this
part.  A global partition number is turned into its slot (topic, replica
set, set's partition); commits go to the group's store
(:mod:`~hpbroker.client.cluster_offsets`), refused for a slot this member
does not own, and positions, seeks and offset lookups go to the set's own
:class:`~hpbroker.client.consumer.Consumer`
(:mod:`~hpbroker.client.set_consumers`).
"""

from __future__ import annotations

import logging
from typing import Iterable

from hpbroker.client.consumer import Consumer
from hpbroker.cluster.client_group import Slot
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import EARLIEST, LATEST

log = logging.getLogger("hpbroker.consumer")


class ClusterPositions:
    """The ClusterConsumer's offsets (it provides ``group_id``, ``_member``,
    ``_offsets``, ``_committed``, ``_sets``, ``_slots``, ``enable_auto_commit``,
    ``_slot`` and ``_key``)."""

    # -- offsets ------------------------------------------------------------------------------

    def _commit_slots(self, offsets: dict[Slot, int], check: bool = True) -> None:
        if not offsets:
            return
        if check and self._member is not None:
            gone = sorted(s for s in offsets if not self._member.owns(s))
            if gone:
                raise BrokerError(ErrorCode.FENCED_MEMBER_EPOCH,
                                  f"{', '.join(f'{t}/{rs}-{p}' for t, rs, p in gone)} not owned by this member "
                                  "any more (given up, or lost with its ZooKeeper session): its new owner commits it")
        self._offsets.commit(offsets)
        self._committed.update(offsets)

    def _changed(self, positions: dict[Slot, int]) -> dict[Slot, int]:
        return {s: o for s, o in positions.items() if self._committed.get(s) != o}

    def _need_group(self) -> None:
        if not self.group_id:
            raise RuntimeError("commit needs a group_id: a consumer without a group has no committed offsets")

    def commit(self, offsets: dict | None = None) -> None:
        """Commit ``offsets`` ({global partition: next offset}) or every
        position; BrokerError FENCED_MEMBER_EPOCH for a partition this member
        does not own (any more)."""
        self._need_group()
        if offsets is None:
            todo = self._changed(self._sets.positions())
        else:
            todo = {self._slot(p): int(o) for p, o in offsets.items()}
        self._commit_slots(todo)

    def commit_async(self, callback=None, offsets: dict | None = None) -> None:
        """As :meth:`commit` (the stores answer at once); ``callback(offsets, exception)``."""
        err = None
        try:
            self.commit(offsets)
        except Exception as e:  # noqa: BLE001 - handed to the callback
            err = e
            if callback is None:
                log.warning("group %s: commit failed: %s", self.group_id, e)
        if callback is not None:
            callback(offsets, err)

    def committed(self, partition) -> int | None:
        self._need_group()
        slot = self._slot(partition)
        return self._offsets.load([slot]).get(slot)

    def _auto_commit(self, now: float) -> None:
        if not self.enable_auto_commit or now < self._next_auto_commit:
            return
        self._next_auto_commit = now + self.auto_commit_interval
        try:
            self.commit()
        except Exception as e:
            log.warning("group %s: auto-commit failed: %s", self.group_id, e)

    # -- positions ------------------------------------------------------------------------------

    def _sub(self, partition) -> tuple[Consumer, int]:
        slot = self._slot(partition)
        sub = self._sets.sub(slot)
        if sub is None or slot not in self._slots:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {partition} is not assigned")
        return sub, slot[2]

    def position(self, partition) -> int:
        sub, p = self._sub(partition)
        return sub.position(p)

    def seek(self, partition, offset: int) -> None:
        sub, p = self._sub(partition)
        sub.seek(p, offset)

    def seek_to_beginning(self, *partitions) -> None:
        for key in partitions or [self._key(s) for s in self._slots]:
            sub, p = self._sub(key)
            sub.seek_to_beginning(p)

    def seek_to_end(self, *partitions) -> None:
        for key in partitions or [self._key(s) for s in self._slots]:
            sub, p = self._sub(key)
            sub.seek_to_end(p)

    def beginning_offsets(self, partitions: Iterable | None = None) -> dict:
        return self._offsets_at(partitions, EARLIEST)

    def end_offsets(self, partitions: Iterable | None = None) -> dict:
        return self._offsets_at(partitions, LATEST)

    def offsets_for_times(self, timestamps: dict) -> dict:
        """{partition: first offset whose batch has max_timestamp >= ts} (the high watermark when none)."""
        return {p: self._list_offset(self._slot(p), ts) for p, ts in timestamps.items()}

    def _offsets_at(self, partitions, spec: int) -> dict:
        if partitions is None:
            return {self._key(s): self._list_offset(s, spec) for s in sorted(self._slots)}
        return {p: self._list_offset(self._slot(p), spec) for p in partitions}

    def _list_offset(self, slot: Slot, spec: int) -> int:
        return self._sets.list_offset(slot, spec)
