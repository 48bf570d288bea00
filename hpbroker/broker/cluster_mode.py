"""The supervisor's side of cluster mode: role at start, failover, demotion.

The ZooKeeper agent (hpbroker/cluster/broker_agent.py) keeps the session,
the registrations and the lease; this object acts on what it reports, in
the supervisor's own loop (:meth:`tick`, every 100 ms at most), through the
supervisor's existing paths: its start, :meth:`Supervisor.promote` (what
``hpbroker promote`` does), and a restart of the whole broker as a slave.

=========================  ======================================================
event                      what the supervisor does
=========================  ======================================================
start                      :func:`~hpbroker.cluster.broker_agent.start_decision`:
                           follow the registered master, or claim a new epoch
                           (compare-and-set) and lead, or wait
master node gone (slave)   probe the master's client port; if it does not answer
                           and this slave was in sync (or unclean_promotion),
                           claim a new epoch with the version read and promote;
                           the loser of a race follows the winner
another master registered  restart as its slave (the replicator follows one URL)
superseded (master)        the lease is already revoked; restart: the start
                           decision makes it a slave of the epoch's holder, and
                           the handshake cuts its divergent tail by epoch
=========================  ======================================================
"""

from __future__ import annotations

import logging
import queue
import socket
import time

import msgspec
import zmq
from kazoo.exceptions import KazooException, NodeExistsError
from kazoo.handlers.threading import KazooTimeoutError

from hpbroker.broker import state as broker_state
from hpbroker.broker.host import StartupError
from hpbroker.cluster import paths, shared_config
from hpbroker.cluster.broker_agent import BrokerAgent, Event, StartDecision, start_decision
from hpbroker.cluster.client_view import ClusterView as ClientView
from hpbroker.ipc import lease as lease_mod
from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.replication import probe
from hpbroker.security import BrokerSecurity
from hpbroker.sockets import drain, make_socket

log = logging.getLogger("hpbroker.supervisor")

WAIT_LOG_S = 10.0  # how often a broker waiting for a master says so


class Restart(Exception):
    """Stop the broker and start it again (the start decision runs anew)."""


class ClusterMode:
    def __init__(self, sup):
        self.sup = sup
        self.cfg = sup.cfg
        self.agent: BrokerAgent | None = None
        self.lease: lease_mod.Lease | None = None
        self.state_sub = None
        self.restart_why = ""
        self._gone_since: float | None = None
        self._next_try = 0.0
        self._refused_logged = False
        self._acl_mirror = None  # security.acl_source = zookeeper: keeps <data_dir>/acl.zookeeper.toml current
        self.map_view: ClientView | None = None  # every set and topic, for Metadata replies (the whole map)
        self.map_bytes = b""  # the newest map, protocol.messages.ClusterMap in msgpack
        self._map_dirty = False

    # -- start -----------------------------------------------------------------------

    def choose_role(self) -> None:
        """Decide the role with ZooKeeper and, to lead, claim the epoch; sets
        the supervisor's role, epoch to take and config (a slave's master URL)."""
        sup, b = self.sup, self.cfg.broker
        self.agent = BrokerAgent(self.cfg)
        try:
            self.agent.connect(timeout=self.cfg.cluster.session_timeout_ms / 1000.0 + 10)
        except Exception as e:  # noqa: BLE001 - kazoo's timeout and connection errors
            raise StartupError(f"cannot reach ZooKeeper at {self.cfg.cluster.zookeeper}: {e}") from None
        if self.cfg.security.acl_source == "zookeeper":
            self._mirror_acl()
        preferred = self.cfg.replication.role
        logged = 0.0
        while True:
            if sup.stop_requested:
                raise StartupError("stopped while waiting for a master in ZooKeeper")
            try:
                self.agent.drop_stale_registration()
                st = self.agent.read_set()
            except (KazooException, KazooTimeoutError) as e:
                log.warning("cluster: ZooKeeper did not answer (%s); trying again", type(e).__name__)
                time.sleep(0.5)
                continue
            d = start_decision(b.broker_id, preferred, st)
            if d.action == "follow":
                self._become(role="slave", master=d.url)
                log.info("cluster: following the registered master %s (broker %d, set %d)", d.url,
                         st.master.broker_id, self.cfg.replica_set)
                return
            if d.action == "lead":
                epoch = broker_state.next_epoch(max(broker_state.load_epoch(sup.data_dir),
                                                    broker_state.max_partition_epoch(sup.data_dir),
                                                    st.epoch.epoch if st.epoch else 0), b.broker_id)
                try:
                    claimed = self.agent.claim_epoch(epoch, st.epoch_version)
                except (KazooException, KazooTimeoutError):
                    claimed = False  # whether it landed or not, the next read says who holds the epoch
                if claimed:
                    self._become(role="master", master="")
                    sup.cluster_epoch = epoch
                    log.info("cluster: leading replica set %d: %s", self.cfg.replica_set, d.why)
                    return
                continue  # another broker wrote the epoch first: decide again
            if time.monotonic() - logged >= WAIT_LOG_S:
                log.warning("cluster: %s", d.why)
                logged = time.monotonic()
            time.sleep(0.2)

    def _mirror_acl(self) -> None:
        """security.acl_source = zookeeper: mirror the cluster's ACL into the
        data directory (hpbroker/cluster/acl_store.py) and make that file
        the acl_file every process of this broker reads and reloads."""
        from hpbroker.cluster.acl_store import AclMirror, read_acl

        mirror = AclMirror(self.agent.zk, self.sup.data_dir)
        got = read_acl(self.agent.zk)
        mirror.start()
        if got is not None:  # the watch's first call has run: wait for its file
            deadline = time.monotonic() + 10
            while mirror.version != got[1] and mirror.rejected == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        if not mirror.path.exists():
            raise StartupError(f"security.acl_source = 'zookeeper', but ZooKeeper has no valid ACL at {paths.ACL} "
                               "and this broker never mirrored one: push one with hpbroker acl push FILE "
                               f"--zookeeper {self.cfg.cluster.zookeeper}")
        if got is None:
            log.warning("cluster: no ACL in ZooKeeper at %s: serving the last one mirrored (%s)", paths.ACL, mirror.path)
        self._acl_mirror = mirror
        sec = msgspec.structs.replace(self.cfg.security, acl_file=str(mirror.path))
        self.cfg = msgspec.structs.replace(self.cfg, security=sec)
        self.sup.cfg = self.cfg

    def open_lease(self) -> None:
        """Create the lease file in the (new) run directory, valid as far as
        the epoch claim made it; before any acceptor starts."""
        self.lease = lease_mod.Lease.create(lease_mod.path_of(self.sup.run_dir))
        self.lease.renew(self.agent.claimed_until)
        self.agent.lease = self.lease

    def _become(self, role: str, master: str) -> None:
        r = msgspec.structs.replace(self.cfg.replication, role=role, master=master)
        self.cfg = msgspec.structs.replace(self.cfg, replication=r)
        self.sup.cfg = self.cfg
        self.sup.role = role
        self.sup.promoted_from = ""
        self.sup.leader_id = self.cfg.broker.broker_id if role == "master" else -1

    def started(self) -> None:
        """The broker serves: register, and start renewing and watching."""
        sup = self.sup
        self.state_sub = make_socket(sup.ctx, zmq.SUB, connect=sup._ipc("repl-state"))
        self.state_sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.agent.set_topics(cluster_topics(sup.topics.topics))
        try:
            self.agent.register(self._node())
        except NodeExistsError:
            raise Restart("another broker registered as the set's master while this one started") from None
        self.agent.start(sup.epoch)
        if self.sup.role == "master":
            self._write_config_checksum()
        self.agent.zk.DataWatch(paths.SHARED_CONFIG, self._shared_config_changed)
        self.map_view = ClientView(self.cfg.cluster.zookeeper, timeout_s=self.cfg.cluster.session_timeout_ms / 1000,
                                   all_topics=True)
        self.map_view.add_listener(self._map_changed)
        self.map_view.start()

    def _map_changed(self, snap) -> None:
        """The view's thread: encode the new map; the supervisor's loop publishes it (tick)."""
        sets = [m.ReplicaSetInfo(replica_set=rs.number, master=rs.master.url if rs.master else "",
                                 master_id=rs.master.broker_id if rs.master else -1,
                                 epoch=rs.master.epoch if rs.master else 0, slaves=[n.url for n in rs.slaves])
                for rs in sorted(snap.sets.values())]
        topics = [m.GlobalTopic(name=t, sets=[[rs, n] for rs, n in sorted(c.items())])
                  for t, c in sorted(snap.topics.items()) if c]
        self.map_bytes = msgspec.msgpack.encode(m.ClusterMap(zookeeper=self.cfg.cluster.zookeeper, sets=sets,
                                                             topics=topics))
        self._map_dirty = True

    def _write_config_checksum(self) -> None:
        """MetaQ's /meta/brokers/ids/<set>/master_config_checksum: the master's effective config's CRC."""
        path, data = paths.config_checksum(self.cfg.replica_set), b"%d" % shared_config.checksum(self.cfg)
        try:
            if self.agent.zk.exists(path) is None:
                self.agent.zk.create(path, data, makepath=True)
            else:
                self.agent.zk.set(path, data)
        except Exception:  # noqa: BLE001 - informative only: never stop serving over it
            log.exception("cluster: writing %s", path)

    def _shared_config_changed(self, data, stat, event=None) -> None:
        """kazoo's thread: say when the cluster's shared settings are newer than these."""
        if data is None:
            return
        try:
            version = paths.decode(data, paths.SharedConfig).version
        except Exception:  # noqa: BLE001 - not ours to judge here; hpbroker cluster config show does
            return
        if version != self.cfg.cluster.config_version:
            log.warning("cluster: the shared settings in ZooKeeper are version %d; this broker runs version %d "
                        "(restart it to apply them)", version, self.cfg.cluster.config_version)

    def _node(self, insync: list[int] | None = None) -> paths.BrokerNode:
        sup, b = self.sup, self.cfg.broker
        host = b.bind if b.bind not in ("0.0.0.0", "*", "::") else socket.gethostname()
        return paths.BrokerNode(broker_id=b.broker_id, replica_set=self.cfg.replica_set,
                                url=f"tcp://{host}:{b.port}", role=sup.role, epoch=sup.epoch,
                                mode=self.cfg.replication.mode,
                                http=f"http://{host}:{sup.cfg.http_port}" if sup.cfg.http_port else "",
                                text=f"{host}:{sup.text_port}" if sup.text_port else "",
                                started_ms=int(time.time() * 1000), insync=insync or [],
                                config_version=self.cfg.cluster.config_version,
                                config_checksum=shared_config.checksum(self.cfg))

    def topics_changed(self, topics: dict[str, int]) -> None:
        """The view changed (a topic, or the epoch a slave follows): keep our nodes in step."""
        if self.agent is not None and self.agent.node is not None:
            self.agent.set_topics(cluster_topics(topics))
            if self.agent.node.epoch != self.sup.epoch and self.agent.node.role == self.sup.role:
                try:
                    self.agent.register(msgspec.structs.replace(self.agent.node, epoch=self.sup.epoch))
                except Exception as e:  # noqa: BLE001 - the loop registers again after a session loss
                    log.warning("cluster: could not update this broker's node in ZooKeeper: %s", e)

    # -- serve -------------------------------------------------------------------------

    def tick(self) -> None:
        """Act on what the agent and the replicator said (the supervisor's loop)."""
        if self._map_dirty:
            self._map_dirty = False
            self.sup.publish_view()  # the acceptors answer Metadata with the new map
        if self.agent is None or self.agent.node is None:
            return
        if self.state_sub is not None:
            for raw in drain(self.state_sub):
                st = ipc_replica.state_decoder.decode(raw)
                if st.role == "master" and self.sup.role == "master":
                    self.agent.update_insync(st.insync_ids)
        try:
            while True:
                try:
                    ev = self.agent.events.get_nowait()
                except queue.Empty:
                    break
                self._on_event(ev)
            if self._gone_since is not None and self.sup.role == "slave" and time.monotonic() >= self._next_try:
                self._try_failover()
        except (KazooException, KazooTimeoutError) as e:
            # ZooKeeper away in the middle of a decision: nothing was changed that the next try does not see
            log.warning("cluster: ZooKeeper did not answer (%s); trying again", type(e).__name__)
            self._next_try = time.monotonic() + 0.5

    def _on_event(self, ev) -> None:
        sup = self.sup
        if ev.kind == "superseded":
            if sup.role == "master":
                raise Restart(f"broker {ev.epoch.broker_id} holds leader epoch {ev.epoch.epoch} of replica set "
                              f"{self.cfg.replica_set} now (this master's is {sup.epoch}): restarting as a slave; "
                              "the handshake cuts this log's divergent tail by epoch")
            return
        if ev.kind != "master" or sup.role != "slave":
            return
        if ev.node is None:
            if self._gone_since is None:
                self._gone_since = time.monotonic()
                self._next_try = 0.0
                self._refused_logged = False
                log.warning("cluster: the master's registration vanished from ZooKeeper")
            return
        self._gone_since = None
        if ev.node.broker_id != self.cfg.broker.broker_id and ev.node.url != self.cfg.replication.master:
            raise Restart(f"broker {ev.node.broker_id} at {ev.node.url} is the master of replica set "
                          f"{self.cfg.replica_set} now: restarting as its slave")

    def _eligible(self) -> str:
        """'' if this slave may promote itself; else why not."""
        if self.cfg.replication.unclean_promotion:
            return ""
        last = self.agent.last_master
        if self.cfg.replication.mode != "sync":
            return ("this slave replicates asynchronously, so it may lack messages the master acknowledged "
                    "(set replication.unclean_promotion = true to promote it anyway)")
        if last is None or self.cfg.broker.broker_id not in last.insync:
            return (f"the master last listed {last.insync if last else []} as its in-sync slaves, not this one "
                    "(set replication.unclean_promotion = true to promote it anyway, losing what it lacks)")
        return ""

    def _try_failover(self) -> None:
        sup = self.sup
        self._next_try = time.monotonic() + 0.5
        why = self._eligible()
        if why:
            if not self._refused_logged:
                log.warning("cluster: not promoting: %s", why)
                self._refused_logged = True
            return
        url = self.cfg.replication.master
        if master_answers(sup.ctx, url, self.cfg.cluster.probe_ms, self.cfg.broker.broker_id, self._curve()):
            log.warning("cluster: the master's registration is gone but %s still answers as master; not promoting",
                        url)
            return
        st = self.agent.read_set()
        if st.master is not None:
            self._on_event(Event("master", node=st.master))
            return
        gone = self.agent.last_master
        me = self.cfg.broker.broker_id
        moved = (st.epoch is not None and gone is not None
                 and (st.epoch.broker_id, st.epoch.epoch) != (gone.broker_id, gone.epoch))
        if moved and st.epoch.broker_id == me:
            epoch = st.epoch.epoch  # our own claim landed, though its answer was lost with the connection
        elif moved:
            # the epoch moved on after the master went: another slave, or the master itself restarted, claimed
            # a new one and is starting; follow it once it registers (the compare-and-set alone only decides
            # claims made from the same version)
            if not self._refused_logged:
                log.warning("cluster: broker %d already claimed epoch %d after the master went; waiting for it to "
                            "register", st.epoch.broker_id, st.epoch.epoch)
                self._refused_logged = True
            return
        else:
            floor = st.epoch.epoch if st.epoch else 0
            epoch = broker_state.next_epoch(max(sup.epoch, broker_state.max_partition_epoch(sup.data_dir), floor), me)
            if not self.agent.claim_epoch(epoch, st.epoch_version):
                log.warning("cluster: another broker claimed the next epoch first; following whoever registers")
                return
        self._gone_since = None
        reply = sup.promote(epoch=epoch, record=False)
        if reply.code:
            raise Restart(f"promotion failed after claiming epoch {epoch}: {reply.message}")
        self.agent.epoch = epoch
        self.cfg = sup.cfg
        try:
            self.agent.register(self._node())
        except NodeExistsError:
            raise Restart("another broker registered as master while this one promoted itself") from None
        log.warning("cluster: promoted to master of replica set %d with leader epoch %d (its master %s was gone)",
                    self.cfg.replica_set, epoch, url)

    def _curve(self):
        """This broker's CURVE options towards a master ([security]), as the promotion probe uses; None when off."""
        try:
            return BrokerSecurity(self.cfg.security, self.sup.ctx).to_master()
        except ValueError:
            return None

    def close(self) -> None:
        if self.map_view is not None:
            self.map_view.close()
            self.map_view = None
        if self.agent is not None:
            if self.lease is not None:
                self.lease.revoke()
            self.agent.close()
            self.agent = None
        if self.state_sub is not None:
            self.state_sub.close(0)
            self.state_sub = None


def cluster_topics(topics: dict[str, int]) -> dict[str, int]:
    """The topics a broker registers in ZooKeeper: not its internal ones
    (``__consumer_offsets``, ``__transactions``), which are each broker's
    own bookkeeping, never partitions of the cluster's global lists."""
    return {t: n for t, n in topics.items() if not t.startswith("__")}


def master_answers(ctx: zmq.Context, url: str, timeout_ms: int, own_id: int, curve=None) -> bool:
    """Does the broker at ``url`` answer as a master that acknowledges?  A
    refused TCP connection says no at once; otherwise one metadata request,
    waited for ``timeout_ms`` (a hung or stopped broker does not answer),
    and a master that says it is fenced counts as not answering."""
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_ms / 1000.0).close()
    except (OSError, ValueError):
        return False
    if probe.master_answering(ctx, url, timeout_ms, own_id, curve=curve) is None:
        return False
    return not fenced(ctx, url, timeout_ms, curve)


def fenced(ctx: zmq.Context, url: str, timeout_ms: int, curve=None) -> bool:
    """Does the broker at ``url`` say it is fenced (its lease ran out: cut off
    from ZooKeeper)?  Such a master acknowledges nothing, and its session has
    expired by the time a slave asks: it must not hold the failover up."""
    s = make_socket(ctx, zmq.DEALER, connect=url, curve=curve)
    try:
        s.send_multipart(codec.encode_request(m.Stats(id=1)), zmq.NOBLOCK)
        if not s.poll(timeout_ms):
            return False  # answered metadata a moment ago: alive, so taken as serving
        rep, _ = codec.decode_reply(s.recv_multipart())
        return bool(isinstance(rep, m.StatsReply) and rep.stats.get("cluster_fenced"))
    except Exception:  # noqa: BLE001 - an answer we cannot read says nothing
        return False
    finally:
        s.close(0)


__all__ = ["ClusterMode", "Restart", "StartDecision", "master_answers"]
