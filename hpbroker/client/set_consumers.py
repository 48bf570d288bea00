"""``SetConsumers``: the per-(topic, replica set) Consumers behind a zk:// Consumer.

Each is an ordinary :class:`~hpbroker.client.consumer.Consumer` given the
set's master and slave URLs and the set's partitions (``Slot`` =
``(topic, set, partition of the set)``), so it follows a promotion within
its set by itself.  This module places slots on them, follows a set whose
brokers changed in ZooKeeper, retries a set that cannot be reached (the
others are read meanwhile), and waits on all their sockets at once.
The caller's thread owns all of it.
"""

from __future__ import annotations

import logging
import time

import zmq

from hpbroker.client.consumer import Consumer
from hpbroker.cluster.client_group import Slot
from hpbroker.cluster.client_view import ClusterView, Snapshot
from hpbroker.protocol.errors import BrokerError, ErrorCode

log = logging.getLogger("hpbroker.consumer")

RETRY_S = 1.0  # how soon a set that could not be reached is tried again

Key = tuple[str, int]  # (topic, replica set)


class SetConsumers:
    def __init__(self, view: ClusterView, options: dict):
        self.view = view
        self.options = options  # Consumer options of every per-set consumer
        self.subs: dict[Key, Consumer] = {}
        self.placed: set[Slot] = set()  # what the per-set consumers fetch
        self._urls: dict[Key, list[str]] = {}
        self._retry_at: dict[Key, float] = {}
        self._carry: dict[Slot, int] = {}  # positions of a per-set consumer replaced by a new one
        self._rr = 0
        self._admins: dict = {}  # set -> Admin, for offsets of partitions not placed here

    def place(self, slots: set[Slot]) -> set[Slot]:
        """Give each per-set consumer its partitions of ``slots`` (positions
        of kept ones kept); the slots newly placed.  A set that cannot be
        reached is left out and tried again ``RETRY_S`` later."""
        by_key: dict[Key, list[int]] = {}
        for t, rs, p in slots:
            by_key.setdefault((t, rs), []).append(p)
        for key in [k for k in self.subs if k not in by_key]:
            self.subs.pop(key).close(autocommit=False)
            self._urls.pop(key, None)
        now = time.monotonic()
        placed: set[Slot] = set()
        for key, ps in by_key.items():
            sub = self.subs.get(key)
            if sub is not None:
                try:
                    sub.assign(sorted(ps))
                except BrokerError:  # the set has more partitions than when its consumer started: a new one
                    for (_t, p), pos in sub._positions().items():
                        self._carry[(*key, p)] = pos
                    self.subs.pop(key).close(autocommit=False)
                    sub = None
            if sub is None:
                if now < self._retry_at.get(key, 0.0):
                    continue
                sub = self._open(key, ps, now)
                if sub is None:
                    continue
            placed |= {(*key, p) for p in ps}
        new = placed - self.placed
        self.placed = placed
        return new

    def _open(self, key: Key, ps: list[int], now: float) -> Consumer | None:
        s = self.view.sets().get(key[1])
        urls = [] if s is None else s.urls()
        try:
            if not urls:
                raise BrokerError(ErrorCode.NOT_LEADER, "no broker registered")
            sub = Consumer(",".join(urls), topic=key[0], partitions=sorted(ps), **self.options)
        except BrokerError as e:
            log.warning("%s: replica set %d: %s; trying again in %g s", key[0], key[1], e, RETRY_S)
            self._retry_at[key] = now + RETRY_S
            return None
        self._retry_at.pop(key, None)
        self.subs[key] = sub
        self._urls[key] = urls
        for p in ps:
            pos = self._carry.pop((*key, p), None)
            if pos is not None:
                sub.seek(p, pos)
        return sub

    def follow(self, snap: Snapshot) -> None:
        """A set whose registered brokers changed: its consumer asks them which one to read from."""
        for key, sub in self.subs.items():
            s = snap.sets.get(key[1])
            urls = [] if s is None else s.urls()
            if urls and urls != self._urls[key]:
                self._urls[key] = urls
                sub._t.bootstraps = urls
                sub._f.lost = True  # the next fetch asks them (Transport.discover)

    def list_offset(self, slot: Slot, spec: int) -> int:
        """ListOffsets of a slot: through its set's consumer, or (not placed
        here) an Admin of the set, kept for the next ask."""
        sub = self.sub(slot)
        if sub is not None:
            return sub._list_offset((slot[0], slot[2]), spec)
        a = self._admins.get(slot[1])
        if a is None:
            s = self.view.sets().get(slot[1])
            if s is None or not s.urls():
                raise BrokerError(ErrorCode.NOT_LEADER, f"replica set {slot[1]} has no broker registered")
            from hpbroker.client.admin import Admin

            keep = ("request_timeout_ms", "connect_timeout_ms", "curve_secret_key_file", "broker_public_key")
            a = self._admins[slot[1]] = Admin(",".join(s.urls()), **{k: v for k, v in self.options.items()
                                                                      if k in keep and v is not None})
        return a.list_offsets(slot[0], slot[2], spec)

    def sub(self, slot: Slot) -> Consumer | None:
        return self.subs.get((slot[0], slot[1])) if slot in self.placed else None

    def positions(self) -> dict[Slot, int]:
        out = {}
        for (t, rs), sub in self.subs.items():
            for (_t, p), part in sub._f.parts.items():
                if part.position is not None:
                    out[(t, rs, p)] = part.position
        return out

    def rotation(self) -> list[tuple[Key, Consumer]]:
        """Every per-set consumer, starting one further each call (fairness)."""
        subs = list(self.subs.items())
        if not subs:
            return subs
        self._rr = (self._rr + 1) % len(subs)
        return subs[self._rr:] + subs[:self._rr]

    def wait(self, seconds: float, fd: int, sockets: bool = True) -> None:
        """Until ``fd`` is readable, a reply or a dropped connection comes
        from any set's broker (with ``sockets``), or ``seconds`` pass."""
        poller = zmq.Poller()
        poller.register(fd, zmq.POLLIN)
        if sockets:
            for sub in self.subs.values():
                for s in sub._t.sockets.values():
                    poller.register(s, zmq.POLLIN)
                for mon in sub._t._monitors:
                    poller.register(mon, zmq.POLLIN)
        poller.poll(max(1, int(seconds * 1000)))

    def close(self) -> None:
        for sub in self.subs.values():
            sub.close(autocommit=False)
        self.subs.clear()
        self.placed = set()
        for a in self._admins.values():
            a.close()
        self._admins.clear()
