"""What a client sees of a cluster in ZooKeeper: replica sets, their brokers,
and each topic's global partition list, kept current by watches.

A client given ``zk://HOST:PORT[,HOST:PORT...][/chroot]`` reads the tree
:mod:`hpbroker.cluster.paths` describes:

* ``/meta/brokers/ids/<set>/master`` and ``…/slave<id>`` (:class:`BrokerNode`):
  where each replica set's master and slaves listen;
* ``/meta/brokers/topics/<topic>/<set>-m`` (and ``-s<id>``): how many
  partitions each set holds of a topic (text, MetaQ's format).

The **global partition list** of a topic is every ``(set, partition)`` pair
those registrations name, sorted: sets in increasing order, then partitions
``0 .. n-1`` of each.  A client's partition number ``g`` is the index into
that list, so with sets 1 and 2 holding 4 partitions each, ``g = 5`` is
``(2, 1)``, MetaQ's ``2-1``.  A set counts with its master's count, or, while
it has no master (a failover in progress), with its slaves' (the largest),
so a key does not move while a slave is being promoted.  Adding a set with a
higher number appends to the list; anything else (a lower set number, more
partitions on a set) shifts later indexes: keys are placed by hash over the
list (MetaQ's partition selectors), so such a change moves keys, as it did
in MetaQ.

:class:`ClusterView` owns one kazoo session.  Watch callbacks only set a
flag; one refresher thread re-reads the (small) tree, publishes a new
:class:`Snapshot` (replaced whole, so readers need no lock) and calls the
listeners when it changed.  A session re-established after a loss re-reads
everything (its watches went with the old session).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, NamedTuple

import msgspec

from hpbroker.cluster import paths
from hpbroker.cluster.paths import BrokerNode

log = logging.getLogger("hpbroker.cluster")

SCHEME = "zk://"


def is_zk_url(url) -> bool:
    return isinstance(url, str) and url.strip().startswith(SCHEME)


def parse_zk_url(url: str) -> str:
    """``"zk://h1:2181,h2:2181/chroot"`` -> kazoo's hosts string
    ``"h1:2181,h2:2181/chroot"``; ValueError for anything else."""
    if not is_zk_url(url):
        raise ValueError(f"a ZooKeeper URL looks like zk://HOST:PORT[,HOST:PORT...][/chroot], got {url!r}")
    rest = url.strip()[len(SCHEME):]
    hosts, slash, chroot = rest.partition("/")
    items = [h.strip() for h in hosts.split(",") if h.strip()]
    if not items:
        raise ValueError(f"no ZooKeeper host in {url!r}")
    for h in items:
        host, colon, port = h.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"a ZooKeeper host must be HOST:PORT, got {h!r} in {url!r}")
    chroot = chroot.strip("/")
    return ",".join(items) + (f"/{chroot}" if chroot else "")


class ReplicaSet(NamedTuple):
    """One replica set as registered: its master (None during a failover) and slaves."""

    number: int
    master: BrokerNode | None
    slaves: tuple[BrokerNode, ...]

    def urls(self) -> list[str]:
        """Client URLs, the master first, then the slaves by broker id: the
        list a Producer or Consumer of this set is given (it follows a
        promotion among them by itself, docs/client.md)."""
        out = [] if self.master is None else [self.master.url]
        out += [s.url for s in self.slaves if s.url not in out]
        return out


class Snapshot(NamedTuple):
    version: int
    sets: dict[int, ReplicaSet]
    #: topic -> {set: partition count}; only the topics a client asked about
    topics: dict[str, dict[int, int]]
    #: topic -> its global partition list, built once per snapshot (a send reads it; do not modify)
    lists: dict[str, list[tuple[int, int]]] = {}

    def partitions(self, topic: str) -> list[tuple[int, int]]:
        """The topic's global partition list: sorted (set, partition) pairs."""
        out = self.lists.get(topic)
        return global_partitions(self.topics.get(topic) or {}) if out is None else out


def global_partitions(counts: dict[int, int]) -> list[tuple[int, int]]:
    return [(rs, p) for rs in sorted(counts) for p in range(counts[rs])]


class ClusterView:
    """The replica sets and the global partition lists of the topics asked
    about, kept current by ZooKeeper watches (see the module docstring)."""

    def __init__(self, hosts: str, *, timeout_s: float = 10.0, all_topics: bool = False):
        """``all_topics``: follow every registered topic (a broker's map of
        the cluster), not only those asked about with :meth:`watch_topic`."""
        self.all_topics = all_topics
        self.hosts = parse_zk_url(hosts) if is_zk_url(hosts) else hosts
        self.timeout_s = timeout_s
        self.zk = None
        self.snapshot = Snapshot(0, {}, {})
        self._topics: set[str] = set()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._dirty = threading.Event()
        self._refreshed = threading.Condition()
        self._refreshes = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._state_listeners: list[Callable[[str], None]] = []

    # -- life ------------------------------------------------------------------------

    def start(self) -> "ClusterView":
        try:
            from kazoo.client import KazooClient
        except ImportError as e:  # pragma: no cover - kazoo is in the test and offsets extras
            raise RuntimeError(f"zk:// URLs need kazoo: pip install 'hpbroker[offsets]' ({e})") from e
        # reconnect at least once a second (kazoo's default backs off to a minute): a group member is paused
        # while disconnected, and its session expires if it comes back after the timeout
        zk = KazooClient(hosts=self.hosts, timeout=self.timeout_s,
                         connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0})
        try:
            zk.start(timeout=self.timeout_s)
        except Exception as e:
            _stop(zk)
            from hpbroker.protocol.errors import BrokerError, ErrorCode

            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT,
                              f"cannot reach ZooKeeper at {self.hosts} within {self.timeout_s:g} s: {e}") from e
        self.zk = zk
        zk.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name="hpbroker-zk-view", daemon=True)
        self._dirty.set()
        self._thread.start()
        self.wait_refreshed(self.timeout_s)
        return self

    def close(self) -> None:
        self._stopping = True
        self._dirty.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.timeout_s)
        zk, self.zk = self.zk, None
        if zk is not None:
            _stop(zk)

    # -- what callers use ------------------------------------------------------------------

    def add_listener(self, fn: Callable[[Snapshot], None]) -> None:
        """``fn(snapshot)`` after every refresh that changed something (refresher thread)."""
        self._listeners.append(fn)

    def add_state_listener(self, fn: Callable[[str], None]) -> None:
        """``fn(state)`` with kazoo's "LOST", "SUSPENDED" or "CONNECTED" (connection thread: do not block)."""
        self._state_listeners.append(fn)

    def watch_topic(self, topic: str, timeout_s: float | None = None) -> list[tuple[int, int]]:
        """Follow ``topic`` from now on; its global partition list now (read
        before returning the first time)."""
        if topic not in self._topics:
            self._topics.add(topic)
            self.refresh_now(timeout_s)
        return self.snapshot.partitions(topic)

    def partitions(self, topic: str) -> list[tuple[int, int]]:
        return self.snapshot.partitions(topic)

    def wait_partitions(self, topic: str, timeout_s: float) -> list[tuple[int, int]]:
        """``topic``'s global partition list, waiting up to ``timeout_s`` for
        a broker to register it (a topic created a moment ago); [] if none did."""
        parts = self.watch_topic(topic)
        deadline = time.monotonic() + timeout_s
        with self._refreshed:
            while not parts:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._refreshed.wait(min(left, 1.0))
                parts = self.snapshot.partitions(topic)
        return parts

    def sets(self) -> dict[int, ReplicaSet]:
        return self.snapshot.sets

    def refresh_now(self, timeout_s: float | None = None) -> Snapshot:
        """Re-read the tree and wait for it (a caller that must see a change it knows of)."""
        with self._refreshed:
            target = self._refreshes + 1
        self._dirty.set()
        self.wait_refreshed(timeout_s, target)
        return self.snapshot

    def wait_refreshed(self, timeout_s: float | None, target: int = 1) -> None:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        with self._refreshed:
            while self._refreshes < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    from hpbroker.protocol.errors import BrokerError, ErrorCode

                    raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"could not read the cluster from ZooKeeper "
                                      f"at {self.hosts} in time")
                self._refreshed.wait(left)

    # -- the refresher ---------------------------------------------------------------------

    def _poke(self, *_event) -> None:
        self._dirty.set()

    def _on_state(self, state) -> None:
        if state == "CONNECTED":
            self._dirty.set()  # a new session has none of the old watches; the same one lost none, but look anyway
        for fn in self._state_listeners:
            try:
                fn(str(state))
            except Exception:  # a listener's bug must not stop kazoo's connection thread
                log.exception("cluster view: state listener failed")

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopping:
                return
            self._dirty.clear()
            try:
                snap = self._read()
            except Exception as e:  # ConnectionLoss, SessionExpired: the state listener pokes us again
                if self._stopping:
                    return
                log.warning("cluster view: could not read %s: %s", self.hosts, e)
                time.sleep(0.2)
                if self.zk is not None and self.zk.connected:
                    self._dirty.set()
                continue
            changed = snap.sets != self.snapshot.sets or snap.topics != self.snapshot.topics
            if changed:
                self.snapshot = snap
            with self._refreshed:
                self._refreshes += 1
                self._refreshed.notify_all()
            if changed:
                for fn in list(self._listeners):
                    try:
                        fn(snap)
                    except Exception:
                        log.exception("cluster view: listener failed")

    def _read(self) -> Snapshot:
        from kazoo.exceptions import NoNodeError

        zk = self.zk
        sets: dict[int, ReplicaSet] = {}
        for name in self._children(paths.BROKER_IDS):
            if not name.isdigit():
                continue
            rs = int(name)
            master = None
            slaves = []
            for kid in sorted(self._children(paths.replica_set(rs))):
                if kid != "master" and not (kid.startswith("slave") and kid[5:].isdigit()):
                    continue
                try:
                    data, _ = zk.get(f"{paths.replica_set(rs)}/{kid}", watch=self._poke)
                    node = paths.decode(data, BrokerNode)
                except NoNodeError:
                    continue
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    log.warning("cluster view: %s/%s is not a BrokerNode: %s", paths.replica_set(rs), kid, e)
                    continue
                if kid == "master":
                    master = node
                else:
                    slaves.append(node)
            slaves.sort(key=lambda n: n.broker_id)
            if master is not None or slaves:
                sets[rs] = ReplicaSet(rs, master, tuple(slaves))
        topics: dict[str, dict[int, int]] = {}
        wanted = set(self._children(paths.BROKER_TOPICS)) if self.all_topics else self._topics
        for topic in sorted(wanted):
            masters: dict[int, int] = {}
            slave_counts: dict[int, int] = {}
            for kid in self._children(paths.topic(topic)):
                try:
                    rs, kind, _bid = paths.parse_topic_child(kid)
                    data, _ = zk.get(f"{paths.topic(topic)}/{kid}", watch=self._poke)
                    n = int(data.decode("ascii").strip())
                except NoNodeError:
                    continue
                except (ValueError, UnicodeDecodeError) as e:
                    log.warning("cluster view: %s/%s: %s", paths.topic(topic), kid, e)
                    continue
                if n < 1:
                    continue
                if kind == "m":
                    masters[rs] = n
                else:
                    slave_counts[rs] = max(n, slave_counts.get(rs, 0))
            topics[topic] = {**slave_counts, **masters}
        return Snapshot(self.snapshot.version + 1, sets, topics, {t: global_partitions(c) for t, c in topics.items()})

    def _children(self, path: str) -> list[str]:
        """The children of ``path`` with a watch; [] (and a watch for its
        creation) when it does not exist yet."""
        from kazoo.exceptions import NoNodeError

        try:
            return self.zk.get_children(path, watch=self._poke)
        except NoNodeError:
            if self.zk.exists(path, watch=self._poke) is not None:
                self._dirty.set()  # created meanwhile
            return []


def _stop(zk) -> None:
    try:
        zk.stop()
    finally:
        zk.close()
