"""Where a consumer's committed offsets live, and committing them.

``broker`` (the default for groups): OffsetCommit / OffsetFetch to the
group's coordinator, which writes each commit durably to
``__consumer_offsets`` before answering, and refuses commits from a member
that does not own the partition (fencing).

Any other store (:mod:`hpbroker.client.offset_stores`: file, sql,
zookeeper, or the caller's own) holds the offsets itself.  A group member
still asks the coordinator first (``OffsetCommit`` with ``validate_only``)
so that a member that lost a partition is told so instead of overwriting
its new owner's progress; the store write follows.  The window between the
check and the write is one round trip (docs/consumer.md, "Fencing with
external stores").
"""

from __future__ import annotations

from typing import Callable, Mapping

from hpbroker.client.membership import Membership, find_coordinator
from hpbroker.client.transport import Transport
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode

TP = tuple[str, int]

_RETRY_COORDINATOR = {ErrorCode.NOT_COORDINATOR, ErrorCode.NOT_LEADER, ErrorCode.REQUEST_TIMED_OUT,
                      ErrorCode.BROKER_SHUTTING_DOWN}


class GroupOffsets:
    def __init__(self, t: Transport, group: str, *, store=None, storage_group: str | None = None,
                 membership: Membership | None = None, timeout_ms: int = 30_000):
        """``group``: the group whose coordinator fences commits;
        ``storage_group``: the name offsets are kept under (a broadcast
        instance's own name; ``group`` by default); ``store``: an
        OffsetStore, or None for the broker."""
        self.t = t
        self.group = group
        self.storage_group = storage_group or group
        self.store = store
        self.membership = membership
        self.timeout_ms = timeout_ms
        self._coordinator: str | None = None
        self.commits = 0

    # -- the coordinator ---------------------------------------------------------------

    def _endpoint(self, group: str) -> str:
        if self._coordinator is None:
            self._coordinator = find_coordinator(self.t, group, timeout_ms=self.timeout_ms)
        return self._coordinator

    def _call(self, group: str, make) -> object:
        """Call the coordinator of ``group`` with ``make(id)``, looking it up
        again once when it moved."""
        for attempt in range(2):
            try:
                rep, _ = self.t.call(self._endpoint(group), make(self.t.next_id()), timeout_ms=self.timeout_ms)
                return rep
            except BrokerError as e:
                if e.code not in _RETRY_COORDINATOR or attempt:
                    raise
                self._coordinator = None
                if self.t.several:  # maybe a failover: find the broker that leads now
                    self.t.discover_now(self.timeout_ms)
        raise AssertionError("unreachable")

    def _who(self) -> tuple[str, int]:
        if self.membership is None:
            return "", -1  # not a member: an admin commit (refused while the group has members)
        return self.membership.identity()

    # -- reading -------------------------------------------------------------------------

    def load(self, tps) -> dict[TP, int]:
        tps = list(tps)
        if not tps:
            return {}
        if self.store is not None:
            return dict(self.store.load(self.storage_group, tps))
        by: dict[str, list[int]] = {}
        for t, p in tps:
            by.setdefault(t, []).append(p)
        parts = [m.TopicPartitions(t, sorted(ps)) for t, ps in by.items()]
        rep = self._call(self.storage_group, lambda i: m.OffsetFetch(id=i, group=self.storage_group, partitions=parts))
        return {(e.topic, e.partition): e.offset for e in rep.offsets}

    # -- committing ----------------------------------------------------------------------

    def _request(self, rid: int, offsets: Mapping[TP, int], validate_only: bool) -> m.OffsetCommit:
        member, epoch = self._who()
        entries = [m.OffsetEntry(t, p, o) for (t, p), o in sorted(offsets.items())]
        group = self.group if self.membership is not None else self.storage_group
        return m.OffsetCommit(id=rid, group=group, member_id=member, member_epoch=epoch, offsets=entries,
                              validate_only=validate_only, timeout_ms=self.timeout_ms)

    def commit(self, offsets: Mapping[TP, int]) -> None:
        """Durable when it returns; raises BrokerError (FENCED_MEMBER_EPOCH,
        UNKNOWN_MEMBER_ID, ...) or the store's OffsetStoreError."""
        if not offsets:
            return
        if self.store is None:
            self._call(self.group if self.membership else self.storage_group,
                       lambda i: self._request(i, offsets, False))
        else:
            if self.membership is not None:
                self._call(self.group, lambda i: self._request(i, offsets, True))
            self.store.commit(self.storage_group, dict(offsets))
        self.commits += 1

    def commit_async(self, offsets: Mapping[TP, int], callback: Callable[[dict, Exception | None], None]) -> None:
        """Send the commit and return; ``callback(offsets, error)`` runs in a
        later ``poll`` (or at once, for a store other than the broker, whose
        write is synchronous)."""
        offsets = dict(offsets)
        if self.store is not None or not offsets:
            try:
                self.commit(offsets)
            except Exception as e:  # handed to the callback, as the broker path does
                callback(offsets, e)
            else:
                callback(offsets, None)
            return
        try:
            endpoint = self._endpoint(self.group if self.membership else self.storage_group)
        except BrokerError as e:
            callback(offsets, e)
            return
        req = self._request(self.t.next_id(), offsets, False)

        def done(rep, _payloads):
            if rep.code:
                if rep.code in _RETRY_COORDINATOR:
                    self._coordinator = None
                callback(offsets, BrokerError(rep.code, rep.message))
            else:
                self.commits += 1
                callback(offsets, None)

        self.t.send(endpoint, req, on_reply=done, timeout_ms=self.timeout_ms)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
