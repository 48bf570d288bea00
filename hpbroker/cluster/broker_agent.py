"""The broker's ZooKeeper agent: registration, the epoch znode, the fencing lease.

It runs as threads of the supervisor (kazoo's own, plus one loop thread of
ours), never in the data path; docs/cluster.md says why not a process.  It
owns the ZooKeeper session and nothing of the broker: what it learns goes
to the supervisor as :class:`Event`s on a queue, which the supervisor's
loop handles (promote, restart as a slave).  It talks to the acceptors
only through the lease (hpbroker/ipc/lease.py).

What it keeps in the tree (hpbroker/cluster/paths.py):

* ``/meta/brokers/ids/<set>/master`` or ``.../slave<id>``: its
  :class:`~hpbroker.cluster.paths.BrokerNode` (ephemeral), re-created after
  a session loss;
* ``/meta/brokers/topics/<topic>/<set>-m`` or ``<set>-s<id>``: the
  partition count of every topic it holds (ephemeral), as topics come;
* ``/meta/brokers/ids/<set>/epoch``: the :class:`EpochNode` (persistent),
  written only by :meth:`claim_epoch`, a create or a ``set`` with the
  version read: of two brokers claiming from the same version, one wins.

The loop asks ZooKeeper for the epoch znode every ``cluster.renew_ms``.
An answer to a request sent at ``t0`` proves the session was alive at
``t0``, so it cannot expire before ``t0 + session timeout``; the lease is
renewed to ``t0 + fence_after_ms``, which is earlier.  A master renews only
while the epoch znode names it with its own epoch and its registration is
in place; otherwise it revokes the lease and reports ``superseded``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import msgspec
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from kazoo.retry import KazooRetry

from hpbroker.cluster import paths

log = logging.getLogger("hpbroker.cluster")


@dataclass(frozen=True)
class Event:
    """What the agent tells the supervisor.  kind: ``master`` (the set's
    master node changed; ``node`` is the new one or None when it vanished),
    ``superseded`` (this master no longer holds the epoch: ``epoch``)."""

    kind: str
    node: paths.BrokerNode | None = None
    epoch: paths.EpochNode | None = None


@dataclass(frozen=True)
class SetState:
    """The replica set as ZooKeeper has it now."""

    master: paths.BrokerNode | None
    master_owner: int  # the session owning the master node (0: none)
    epoch: paths.EpochNode | None
    epoch_version: int  # -1: no epoch node


@dataclass(frozen=True)
class StartDecision:
    """``follow`` the master at ``url``; ``lead`` (claim the epoch from
    ``version``); or ``wait`` for a master, saying why."""

    action: str
    url: str = ""
    why: str = ""


def start_decision(me: int, preferred: str, state: SetState) -> StartDecision:
    """How a broker starting in cluster mode takes part in its replica set.

    ===========================  ==========================  =====================
    master node                  epoch node                  decision
    ===========================  ==========================  =====================
    another broker's             any                         follow it
    none                         none                        lead if the flags say
                                                             master, else wait
    none                         held by this broker         lead (a new epoch)
    none                         held by another broker      wait: it may hold
                                                             acknowledged messages
                                                             this one lacks
    ===========================  ==========================  =====================

    (A master node of this broker's own, left by its previous session, is
    deleted by the agent before it asks.)"""
    m, e = state.master, state.epoch
    if m is not None and m.broker_id != me:
        return StartDecision("follow", url=m.url)
    if e is None:
        if preferred == "master":
            return StartDecision("lead", why="no epoch in ZooKeeper yet: the first master of the set")
        return StartDecision("wait", why="no master registered and no epoch yet: waiting for a master")
    if e.broker_id == me:
        return StartDecision("lead", why=f"this broker holds the set's epoch ({e.epoch}) and no other is master")
    return StartDecision("wait", why=f"broker {e.broker_id} holds the set's epoch {e.epoch} and is not registered: "
                                     "waiting for it (or a slave it had in sync) to register as master")


class BrokerAgent:
    def __init__(self, cfg, lease=None, clock=time.monotonic):
        """``cfg``: the broker's Config; ``lease``: an ipc.lease.Lease to renew (None: none)."""
        self.cfg = cfg
        self.me = cfg.broker.broker_id
        self.rs = cfg.replica_set
        self.lease = lease
        self.clock = clock
        self.fence_s = cfg.cluster.fence_ms() / 1000.0
        self.renew_s = cfg.cluster.renew_every_ms() / 1000.0
        self.events: queue.Queue[Event] = queue.Queue()
        self.zk = KazooClient(hosts=cfg.cluster.zookeeper, timeout=cfg.cluster.session_timeout_ms / 1000.0,
                              connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=1.5, max_delay=1.0),
                              command_retry=None)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.node: paths.BrokerNode | None = None  # what we register (None: not yet)
        self.topics: dict[str, int] = {}  # what we should have registered
        self._registered_topics: dict[str, str] = {}  # topic -> the path we created
        self._registered = False  # our nodes exist in the current session
        self._session = 0
        self.last_master: paths.BrokerNode | None = None  # the newest master node seen (a slave's)
        self.renewals = 0
        self.claimed_until = 0.0  # the lease an epoch claim earned (kept until the lease file exists)
        self.epoch = 0  # the epoch this broker leads or follows (a master renews only while ZooKeeper says it)
        self.zk.add_listener(self._on_state)

    # -- session -----------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> None:
        self.zk.start(timeout=timeout)
        self._session = self.zk.client_id[0]
        for p in (paths.replica_set(self.rs), paths.BROKER_TOPICS):
            self.zk.ensure_path(p)

    def _on_state(self, state) -> None:
        # kazoo's thread: never block here
        if state == KazooState.LOST:
            self._registered = False
            self._registered_topics = {}
            if self.lease is not None:
                self.lease.revoke()  # our nodes are gone: another broker may be master any moment
            log.warning("ZooKeeper session lost: registrations gone; fenced until it is back and checked")
        elif state == KazooState.SUSPENDED:
            log.warning("ZooKeeper connection suspended; acknowledging at most %.1f s past the last answer",
                        self.fence_s)
        else:
            log.info("ZooKeeper connected (session 0x%x)", self.zk.client_id[0] if self.zk.client_id else 0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.zk.stop()  # closes the session: our ephemeral nodes go at once
            self.zk.close()
        except Exception:  # noqa: BLE001 - stopping must not fail the broker's stop
            log.exception("closing the ZooKeeper client")

    # -- reading the set ---------------------------------------------------------

    def read_set(self) -> SetState:
        master, owner = None, 0
        try:
            data, stat = self.zk.get(paths.master(self.rs))
            master, owner = paths.decode(data, paths.BrokerNode), stat.ephemeralOwner
        except NoNodeError:
            pass
        try:
            data, stat = self.zk.get(paths.epoch(self.rs))
            return SetState(master, owner, paths.decode(data, paths.EpochNode), stat.version)
        except NoNodeError:
            return SetState(master, owner, None, -1)

    def drop_stale_registration(self) -> bool:
        """Delete a master node of this broker left by an earlier session
        (a kill -9 and a restart before the session expired); True if it did."""
        try:
            data, stat = self.zk.get(paths.master(self.rs))
        except NoNodeError:
            return False
        node = paths.decode(data, paths.BrokerNode)
        if node.broker_id != self.me or stat.ephemeralOwner == self.zk.client_id[0]:
            return False
        try:
            self.zk.delete(paths.master(self.rs), version=stat.version)
            log.info("deleted the master registration of this broker's previous ZooKeeper session")
            return True
        except (NoNodeError, BadVersionError):
            return False

    def claim_epoch(self, epoch: int, version: int) -> bool:
        """Make ``epoch`` the set's, held by this broker, if the epoch node is
        still at ``version`` (-1: if there is none).  False: another broker
        wrote it first."""
        data = paths.encode(paths.EpochNode(epoch=epoch, broker_id=self.me, at_ms=int(time.time() * 1000)))
        t0 = self.clock()
        try:
            if version < 0:
                self.zk.create(paths.epoch(self.rs), data, makepath=True)
            else:
                self.zk.set(paths.epoch(self.rs), data, version=version)
        except (NodeExistsError, BadVersionError, NoNodeError):
            return False
        self.claimed_until = t0 + self.fence_s
        if self.lease is not None:
            self.lease.renew(self.claimed_until)
        log.warning("claimed leader epoch %d of replica set %d in ZooKeeper (version %d)", epoch, self.rs, version + 1)
        return True

    # -- registration ------------------------------------------------------------

    def register(self, node: paths.BrokerNode) -> None:
        """(Re-)register as ``node`` (its role says where).  Raises
        NodeExistsError when another broker is registered as master; with
        ZooKeeper away it leaves the registration to the loop, which
        makes it once ZooKeeper answers (a master renews its lease only then)."""
        with self._lock:
            old = self.node
            self.node = node
            self._registered = False
            try:
                if old is not None and old.role != node.role:
                    self._delete_quietly(self._node_path(old))
                    for path in self._registered_topics.values():
                        self._delete_quietly(path)
                    self._registered_topics = {}
                self._put_node()
                self._registered = True
                self._sync_topics()
            except NodeExistsError:
                raise
            except KazooException as e:
                self._registered = False
                log.warning("could not register as %s in ZooKeeper now (%s); retrying", node.role, e)

    def update_insync(self, ids: list[int]) -> None:
        with self._lock:
            if self.node is None or self.node.role != "master" or list(ids) == self.node.insync:
                return
            self.node = msgspec.structs.replace(self.node, insync=list(ids))
            if not self._registered:
                return  # the loop puts the whole node back, this list in it
            try:
                # only into our own node of this session: after a session loss the path may be another master's
                path = self._node_path(self.node)
                stat = self.zk.exists(path)
                if stat is None or stat.ephemeralOwner != self.zk.client_id[0]:
                    self._registered = False
                    return
                self.zk.set(path, paths.encode(self.node), version=stat.version)
            except KazooException as e:
                log.warning("could not write the in-sync slaves %s to ZooKeeper: %s", ids, e)
                self._registered = False  # the loop puts the whole node back

    def set_topics(self, topics: dict[str, int]) -> None:
        with self._lock:
            if topics == self.topics:
                return
            self.topics = dict(topics)
            if self._registered:
                try:
                    self._sync_topics()
                except KazooException as e:
                    log.warning("could not register topics in ZooKeeper (retried): %s", e)
                    self._registered = False

    def _node_path(self, node: paths.BrokerNode) -> str:
        return paths.master(self.rs) if node.role == "master" else paths.slave(self.rs, self.me)

    def _put_node(self) -> None:
        path, data = self._node_path(self.node), paths.encode(self.node)
        try:
            self.zk.create(path, data, ephemeral=True, makepath=True)
        except NodeExistsError:
            d, stat = self.zk.get(path)
            if stat.ephemeralOwner != self.zk.client_id[0]:
                if paths.decode(d, paths.BrokerNode).broker_id != self.me:
                    raise
                self.zk.delete(path, version=stat.version)  # ours, of an older session
                self.zk.create(path, data, ephemeral=True, makepath=True)
            else:
                self.zk.set(path, data)

    def _sync_topics(self) -> None:
        role = self.node.role
        for name, n in self.topics.items():
            path = (paths.topic_master(name, self.rs) if role == "master"
                    else paths.topic_slave(name, self.rs, self.me))
            if self._registered_topics.get(name) == path:
                continue
            try:
                self.zk.create(path, str(n).encode(), ephemeral=True, makepath=True)
            except NodeExistsError:
                self.zk.set(path, str(n).encode())
            self._registered_topics[name] = path

    def _delete_quietly(self, path: str) -> None:
        try:
            self.zk.delete(path)
        except KazooException:
            pass

    # -- the loop ------------------------------------------------------------------

    def start(self, epoch: int) -> None:
        """Start renewing (``epoch``: the one this broker leads or follows)."""
        self.epoch = epoch
        self.zk.DataWatch(paths.master(self.rs), self._on_master)
        self._thread = threading.Thread(target=self._loop, name="zk-agent", daemon=True)
        self._thread.start()

    def _on_master(self, data, stat, event=None) -> None:
        node = None
        if data:
            try:
                node = paths.decode(data, paths.BrokerNode)
            except Exception:  # noqa: BLE001 - a node we cannot read is no master to follow
                log.error("unreadable master node in ZooKeeper: %r", data[:200])
        if node is not None:
            self.last_master = node
        self.events.put(Event("master", node=node))

    def _loop(self) -> None:
        while True:  # at once first: the lease the epoch claim earned may have run out while the broker started
            t0 = self.clock()
            try:
                self._renew(t0)
            except Exception as e:  # noqa: BLE001 - ZooKeeper away: the lease runs out by itself
                log.debug("renewal failed: %s", e)
            if self._stop.wait(self.renew_s):
                return

    def _renew(self, t0: float) -> None:
        data, stat = self.zk.get_async(paths.epoch(self.rs)).get(timeout=self.fence_s)
        held = paths.decode(data, paths.EpochNode)
        with self._lock:
            if self.node is None:
                return
            if self.node.role == "master" and (held.broker_id != self.me or held.epoch != self.epoch):
                if self.lease is not None:
                    self.lease.revoke()
                self.events.put(Event("superseded", epoch=held))
                return
            if not self._registered:
                if self.node.role == "master":
                    # a new session: claim the epoch again (the same one) before acknowledging, so that a
                    # slave that read the epoch znode while this master's node was gone cannot claim from
                    # that version too and make two masters
                    try:
                        self.zk.set(paths.epoch(self.rs), data, version=stat.version)
                    except BadVersionError:
                        return  # changed since read: the next turn looks again
                try:
                    self._put_node()
                except NodeExistsError:
                    if self.lease is not None:
                        self.lease.revoke()
                    self.events.put(Event("superseded", epoch=held))
                    return
                self._registered_topics = {}
                self._sync_topics()
                self._registered = True
                log.warning("registered again in ZooKeeper as %s of replica set %d", self.node.role, self.rs)
                return  # the lease is renewed by the next turn's read, which sees the tree as it is now
            if self.node.role == "master":
                stat = self.zk.exists(paths.master(self.rs))
                if stat is None or stat.ephemeralOwner != self.zk.client_id[0]:
                    self._registered = False  # not our node (any more): no renewal until it is put back
                    return
            if self.lease is not None:
                self.lease.renew(t0 + self.fence_s)
            self.renewals += 1
            if self.node.role == "slave" and not self.zk.exists(paths.master(self.rs)):
                self.events.put(Event("master", node=None))  # a watch lost with a session: ask again
