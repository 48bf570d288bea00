"""A consumer group across brokers, MetaQ's way: members and owners are
ZooKeeper nodes, and every member rebalances itself on child watches.

=================================================  ==========  ===============================
node                                               kind        data
=================================================  ==========  ===============================
/meta/consumers/<g>/ids/<g>_<member>               ephemeral   :class:`MemberNode` (its topics)
/meta/consumers/<g>/owners/<topic>/<set>-<p>       ephemeral   text: the owning member's id
=================================================  ==========  ===============================

Each member computes its own share (:func:`range_assign`, MetaQ's
``DefaultLoadBalanceStrategy``: per topic, the global partition list cut
into consecutive ranges over the members sorted by id, the first
``P % C`` members taking one more) from the members' nodes and the
topic's global partition list, then:

* **claims** each partition of its share by creating its owner node.  A
  node still held by the previous owner is left alone (a data watch on it
  fires when it goes); so a partition has at most one owner at any time -
  ZooKeeper's create is the arbiter;
* **gives up** a partition outside its share only once its consumer has
  stopped fetching it and committed it (:meth:`GroupMember.take` hands the
  consumer the list; :meth:`GroupMember.release` deletes the owner nodes).

Sessions: a SUSPENDED connection pauses the consumer (it hands out nothing
while it cannot know whether it still owns its partitions: its session may
expire on the server meanwhile and another member claim them); CONNECTED
resumes it.  A LOST (expired) session took every ephemeral node with it:
the member forgets what it owned (the consumer drops those partitions
without committing: their new owners commit them) and, once kazoo has a new
session, registers again and claims a new share.

The kazoo work runs on the member's own thread; the consumer's thread
calls :meth:`take` and :meth:`release` only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

import msgspec

from hpbroker.cluster import paths
from hpbroker.cluster.client_view import ClusterView
from hpbroker.cluster.paths import MemberNode

log = logging.getLogger("hpbroker.cluster")

#: (topic, replica set, partition of the set)
Slot = tuple[str, int, int]


def range_assign(partitions: list, members: list[str], me: str) -> list:
    """``me``'s range of ``partitions`` among ``members`` (MetaQ's DEFAULT strategy)."""
    members = sorted(members)
    if me not in members or not partitions:
        return []
    i = members.index(me)
    per, extra = divmod(len(partitions), len(members))
    start = per * i + min(i, extra)
    return partitions[start: start + per + (1 if i < extra else 0)]


def new_member_id(instance: str) -> str:
    return f"{instance}-{os.getpid()}-{os.urandom(3).hex()}"


class GroupMember:
    def __init__(self, view: ClusterView, group: str, topics: list[str], member_id: str,
                 on_change: Callable[[], None]):
        for name in (group, *topics):
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"a group or topic kept in ZooKeeper cannot be {name!r}")
        self.view = view
        self.group = group
        self.topics = list(topics)
        self.member_id = member_id
        self.on_change = on_change
        self.path = paths.group_member(group, member_id)
        self._lock = threading.Lock()
        self.owned: set[Slot] = set()
        self.target: frozenset[Slot] = frozenset()
        self.generation = 0  # +1 each time the session was lost
        self.paused = False
        self._registered = False
        self._dirty = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"hpbroker-zk-group-{group}", daemon=True)
        self.rebalances = 0

    # -- the consumer's thread -------------------------------------------------------------------

    def start(self) -> None:
        self.view.add_listener(lambda _snap: self._dirty.set())
        self.view.add_state_listener(self._on_state)
        for t in self.topics:
            self.view.watch_topic(t)
        self._dirty.set()
        self._thread.start()

    def take(self) -> tuple[int, bool, frozenset[Slot], frozenset[Slot]]:
        """(generation, paused, owned partitions to fetch, owned partitions to give up)."""
        with self._lock:
            owned = frozenset(self.owned)
            return self.generation, self.paused, owned & self.target, owned - self.target

    def owns(self, slot: Slot) -> bool:
        return slot in self.owned and not self.paused

    def release(self, slots) -> None:
        """Delete the owner nodes of ``slots`` (the consumer stopped fetching them and committed)."""
        from kazoo.exceptions import NoNodeError

        zk = self.view.zk
        for slot in slots:
            with self._lock:
                if slot not in self.owned:
                    continue
                self.owned.discard(slot)
            try:
                zk.delete(paths.group_owner(self.group, *slot))
            except NoNodeError:
                pass
            except Exception as e:  # the session is gone: the node went with it
                log.warning("group %s: could not release %s: %s", self.group, _name(slot), e)
        self._dirty.set()

    def close(self) -> None:
        """Give up everything at once and leave the group (the others take over)."""
        self._stopping = True
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(self.view.timeout_s)
        with self._lock:
            owned = list(self.owned)
        self.release(owned)
        zk = self.view.zk
        if zk is not None and self._registered:
            try:
                zk.delete(self.path)
            except Exception:
                pass

    # -- the member's thread ----------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        changed = False
        with self._lock:
            if state == "LOST":
                self.owned.clear()
                self.generation += 1
                self._registered = False
                self.paused = False
                changed = True
            elif state == "SUSPENDED":
                changed = not self.paused
                self.paused = True
            elif state == "CONNECTED":
                changed = self.paused
                self.paused = False
        if state == "CONNECTED":
            self._dirty.set()
        if changed:
            self.on_change()

    def _poke(self, *_event) -> None:
        self._dirty.set()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopping:
                return
            self._dirty.clear()
            zk = self.view.zk
            if zk is None or not zk.connected:
                continue  # the CONNECTED state pokes us again
            try:
                self._rebalance(zk)
            except Exception as e:  # ConnectionLoss, SessionExpired: the state listener pokes us again
                log.warning("group %s: rebalance failed: %s", self.group, e)
                time.sleep(0.2)
                if zk.connected:
                    self._dirty.set()

    def _rebalance(self, zk) -> None:
        from kazoo.exceptions import NodeExistsError, NoNodeError

        if not self._registered:
            node = MemberNode(member=self.member_id, topics=self.topics, host=socket.gethostname(), pid=os.getpid())
            try:
                zk.create(self.path, paths.encode(node), ephemeral=True, makepath=True)
            except NodeExistsError:  # ours, from before a reconnect of the same session
                pass
            self._registered = True
        members: dict[str, list[str]] = {}
        prefix = f"{self.group}_"
        for name in zk.get_children(paths.group_ids(self.group), watch=self._poke):
            if not name.startswith(prefix):
                continue
            try:
                data, _ = zk.get(f"{paths.group_ids(self.group)}/{name}")
                members[name[len(prefix):]] = paths.decode(data, MemberNode).topics
            except NoNodeError:
                continue
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("group %s: member node %s is not a MemberNode", self.group, name)
        snap = self.view.snapshot
        target: set[Slot] = set()
        for topic in self.topics:
            subscribers = [m for m, ts in members.items() if topic in ts]
            for rs, p in range_assign(snap.partitions(topic), subscribers, self.member_id):
                target.add((topic, rs, p))
        with self._lock:
            before = (frozenset(self.owned), self.target)
            self.target = frozenset(target)
            want = target - self.owned
            generation = self.generation
        session = zk.client_id[0] if zk.client_id else None
        for slot in sorted(want):
            path = paths.group_owner(self.group, *slot)
            try:
                zk.create(path, self.member_id.encode(), ephemeral=True, makepath=True)
                claimed = True
            except NodeExistsError:
                try:  # someone holds it: ours from a reconnect of this session, or wait for its deletion
                    _data, stat = zk.get(path, watch=self._poke)
                    claimed = stat.ephemeralOwner == session
                except NoNodeError:
                    self._dirty.set()  # released meanwhile: try again
                    claimed = False
            if claimed:  # even if no longer wanted meanwhile: then take() lists it to give up
                with self._lock:
                    if self.generation != generation:
                        # the session was lost meanwhile: this node may have gone with it.  If it was made
                        # by the new session, the next rebalance finds it ours (its ephemeralOwner)
                        self._dirty.set()
                        break
                    self.owned.add(slot)
        with self._lock:
            after = (frozenset(self.owned), self.target)
        if after != before:
            self.rebalances += 1
            self.on_change()


def _name(slot: Slot) -> str:
    return f"{slot[0]}/{slot[1]}-{slot[2]}"
