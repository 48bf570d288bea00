"""Cluster mode, the broker side: real ZooKeeper, real brokers on loopback.

Registration and topic nodes, automatic failover after kill -9, the old
master rejoining as a slave, two slaves racing, a master stopped past its
session timeout (fencing), and ZooKeeper stopped and restarted under load
(docs/cluster.md).  Each test uses a ZooKeeper chroot of its own.  Sessions
are 2 s here (the default is 6 s) so that each failover takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from brokerproc import BrokerProcess
from hpbroker import batch
from hpbroker.cluster import paths
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from rawclient import RawClient
from servers import ZooKeeperServer, own_zookeeper
from test_replication import PARTITIONS, assert_present, caught_up, compare, produce_stream, stats, wait_until


@pytest.fixture(scope="module")
def zookeeper_server():
    """This module's own ZooKeeper (servers.own_zookeeper): a group of its own under xdist."""
    yield from own_zookeeper()

SESSION_MS = 2000


def chroot(zk) -> str:
    return f"{zk.hosts}/t{uuid.uuid4().hex[:10]}"


def toml(tmp_path, name: str, min_insync: int = 1, extra: str = "", mode: str = "sync") -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(f'[replication]\nmode = "{mode}"\nmin_insync_replicas = {min_insync}\nreplica_lag_max_ms = 1500\n'
                 f"ack_interval_ms = 50\n{extra}\n[ring]\ndead_after_ms = 60000\n"
                 f"[cluster]\nsession_timeout_ms = {SESSION_MS}\n")
    return str(p)


def broker(tmp_path, name: str, zk: str, role: str, broker_id: int, rs: int = 1, port=None, min_insync: int = 1,
           extra: str = "", start: bool = True, mode: str = "sync", args: tuple = ()) -> BrokerProcess:
    b = BrokerProcess(tmp_path / name, port=port, args=(
        "--config", toml(tmp_path, name, min_insync, extra, mode), "--role", role, "--broker-id", str(broker_id),
        "--replica-set", str(rs), "--zookeeper", zk, "--partitions", str(PARTITIONS), *args))
    return b.start() if start else b


def zk_client(hosts: str):
    from kazoo.client import KazooClient

    z = KazooClient(hosts=hosts, timeout=10.0)
    z.start(timeout=10.0)
    return z


def node(z, path: str, kind=paths.BrokerNode):
    try:
        return paths.decode(z.get(path)[0], kind)
    except Exception:  # noqa: BLE001 - absent (NoNodeError) or not written yet
        return None


def role_of(b: BrokerProcess) -> str | None:
    try:
        return stats(b).get("role")
    except Exception:  # noqa: BLE001 - down or restarting
        return None


def stop_all(*brokers) -> None:
    for b in brokers:
        if b is not None and b.proc is not None:
            b.stop()


@pytest.fixture
def zk(zookeeper_server):
    return zookeeper_server


def test_brokers_register_their_role_epoch_and_topics(tmp_path, zk):
    hosts = chroot(zk)
    a = broker(tmp_path, "a", hosts, "master", 1)
    b = broker(tmp_path, "b", hosts, "slave", 2)  # no --master: found in ZooKeeper
    z = zk_client(hosts)
    try:
        mnode = node(z, paths.master(1))
        assert (mnode.broker_id, mnode.role, mnode.url, mnode.replica_set, mnode.mode) == (1, "master", a.url, 1, "sync")
        snode = node(z, paths.slave(1, 2))
        assert (snode.broker_id, snode.role, snode.url) == (2, "slave", b.url)
        ep = node(z, paths.epoch(1), paths.EpochNode)
        assert ep.broker_id == 1 and ep.epoch == mnode.epoch == stats(a)["leader_epoch"]
        assert stats(a)["cluster_fenced"] == 0 and stats(a)["cluster_lease_remaining_s"] > 0
        assert z.exists(paths.master(1)).ephemeralOwner and not z.exists(paths.epoch(1)).ephemeralOwner
        wait_until(lambda: node(z, paths.master(1)).insync == [2], 30, "the master to list its slave in sync")
        wait_until(lambda: stats(b).get("replication_master") == a.url, 30, "the slave to report its master")
        # a topic created now is registered by both, with its partition count
        produce_stream(a.url, "x", 0.3)
        wait_until(lambda: z.exists(paths.topic_slave("rep", 1, 2)), 30, "the slave's topic node")
        assert z.get(paths.topic_master("rep", 1))[0] == str(PARTITIONS).encode()
        assert z.get(paths.topic_slave("rep", 1, 2))[0] == str(PARTITIONS).encode()
        # the console shows both, their epochs, the slave's lag and what the master leads
        r = subprocess.run([sys.executable, "-m", "hpbroker", "cluster", "status", "--zookeeper", hosts, "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rows = {row["broker"]: row for row in json.loads(r.stdout)["brokers"]}
        assert (rows[1]["role"], rows[2]["role"]) == ("master", "slave")
        assert rows[1]["epoch"] == rows[2]["epoch"] == ep.epoch
        assert rows[1]["leads"] == f"rep:1-0..{PARTITIONS - 1}" and "streaming" in rows[2]["lag"]
        # ephemeral: a stopped slave's nodes go with its session
        b.stop()
        wait_until(lambda: not z.exists(paths.slave(1, 2)) and not z.exists(paths.topic_slave("rep", 1, 2)), 30,
                   "the slave's nodes to go")
        assert z.exists(paths.master(1)) and z.exists(paths.topic_master("rep", 1))
    finally:
        z.stop()
        stop_all(a, b)


def test_kill_9_of_a_sync_master_its_slave_takes_over_and_the_old_master_rejoins_byte_identical(tmp_path, zk):
    hosts = chroot(zk)
    a = broker(tmp_path, "a", hosts, "master", 1)
    b = broker(tmp_path, "b", hosts, "slave", 2)
    z = zk_client(hosts)
    a2 = None
    try:
        wait_until(lambda: node(z, paths.master(1)).insync == [2], 30, "the slave in sync")
        before = node(z, paths.epoch(1), paths.EpochNode)
        acked = produce_stream(a.url, "k", 1.5, acks=-1, kill=a.kill)
        assert acked
        wait_until(lambda: role_of(b) == "master", 30, "the slave to promote itself", state=b.log)
        ep = node(z, paths.epoch(1), paths.EpochNode)
        assert ep.broker_id == 2 and ep.epoch > before.epoch and ep.epoch == stats(b)["leader_epoch"]
        assert node(z, paths.master(1)).url == b.url
        assert_present(b, acked)  # nothing acknowledged is lost
        more = produce_stream(b.url, "after", 0.5, acks=-1)  # acks=all resumes (min_insync_replicas = 1)
        assert more
        # the old master comes back with its master flags: ZooKeeper makes it a slave of b
        a2 = broker(tmp_path, "a", hosts, "master", 1, port=a.port)
        wait_until(lambda: stats(a2).get("replication_master") == b.url and caught_up(b, a2), 60,
                   "the old master to follow and catch up", state=a2.log)
        assert role_of(a2) == "slave"
        acked.update(more)
        assert_present(a2, acked)
    finally:
        z.stop()
        stop_all(a2, b, a)
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0 and r.stdout.count("SAME") == PARTITIONS, r.stdout + r.stderr


@pytest.mark.parametrize("min_insync", [1, 2])
def test_a_promoted_master_answers_acks_all_with_either_min_insync(tmp_path, zk, min_insync):
    """The hang of issue 22: a promoted sync master whose old master is dead
    must answer acks=all - an ack with min_insync_replicas 1, NOT_ENOUGH_REPLICAS with 2."""
    hosts = chroot(zk)
    a = broker(tmp_path, "a", hosts, "master", 1, min_insync=min_insync)
    b = broker(tmp_path, "b", hosts, "slave", 2, min_insync=min_insync)
    z = zk_client(hosts)
    try:
        wait_until(lambda: node(z, paths.master(1)).insync == [2], 30, "the slave in sync")
        assert produce_stream(a.url, "p", 0.3, acks=-1)
        a.kill()
        wait_until(lambda: role_of(b) == "master", 30, "the slave to promote itself", state=b.log)
        c = RawClient(b.url, timeout_ms=10_000)
        req = m.Produce(id=c.next_id(), topic="rep", partition=0, acks=-1, timeout_ms=5000)
        c.send_frames(codec.encode_request(req, [batch.encode_batch([b"after"])]))
        rep, _ = c.recv()  # an answer, never silence
        c.close()
        want = ErrorCode.OK if min_insync == 1 else ErrorCode.NOT_ENOUGH_REPLICAS
        assert rep.code == want, rep
    finally:
        z.stop()
        stop_all(a, b)


def test_two_slaves_racing_to_promote_make_one_master(tmp_path, zk):
    hosts = chroot(zk)
    a = broker(tmp_path, "a", hosts, "master", 1, min_insync=2)
    b = broker(tmp_path, "b", hosts, "slave", 2, min_insync=2)
    c = broker(tmp_path, "c", hosts, "slave", 3, min_insync=2)
    z = zk_client(hosts)
    try:
        wait_until(lambda: node(z, paths.master(1)).insync == [2, 3], 30, "both slaves in sync")
        acked = produce_stream(a.url, "r", 1.0, acks=-1, kill=a.kill)
        wait_until(lambda: role_of(b) == "master" or role_of(c) == "master", 30, "a slave to promote itself")
        time.sleep(SESSION_MS / 1000)  # room for a second (wrong) winner to show
        winner, loser = (b, c) if role_of(b) == "master" else (c, b)
        ep = node(z, paths.epoch(1), paths.EpochNode)
        assert ep.broker_id == (2 if winner is b else 3)
        assert node(z, paths.master(1)).url == winner.url
        # the loser follows the winner (it restarts as its slave)
        wait_until(lambda: (role_of(loser) == "slave" and stats(loser).get("replication_master") == winner.url
                            and caught_up(winner, loser)), 60, "the loser to follow the winner", state=loser.log)
        assert role_of(winner) == "master"
        assert_present(winner, acked)
        assert_present(loser, acked)
    finally:
        z.stop()
        stop_all(a, b, c)


def test_a_master_stopped_past_its_session_timeout_never_acks_as_master_after_it_continues(tmp_path, zk):
    hosts = chroot(zk)
    a = broker(tmp_path, "a", hosts, "master", 1)
    b = broker(tmp_path, "b", hosts, "slave", 2)
    z = zk_client(hosts)
    try:
        wait_until(lambda: node(z, paths.master(1)).insync == [2], 30, "the slave in sync")
        acked = produce_stream(a.url, "s", 0.5, acks=-1)
        wait_until(lambda: caught_up(a, b), 30, "the slave to catch up")
        os.killpg(a.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: role_of(b) == "master", 30, "the slave to promote itself", state=b.log)
            # produce requests reach the stopped master's socket (the kernel takes them)
            cl = RawClient(a.url, timeout_ms=15_000)
            sent = []
            for k in range(4):
                for acks in (1, -1):
                    req = m.Produce(id=cl.next_id(), topic="rep", partition=k, acks=acks, timeout_ms=10_000)
                    cl.send_frames(codec.encode_request(req, [batch.encode_batch([f"stale{k}{acks}".encode()])]))
                    sent.append(req.id)
        finally:
            os.killpg(a.pid, signal.SIGCONT)
        answers = []
        try:
            while len(answers) < len(sent):
                answers.append(cl.recv()[0])
        except TimeoutError:
            pass  # requests a restarting broker never read are unanswered, not acknowledged
        cl.close()
        # answered at once (its lease ran out while it was stopped), never acknowledged
        assert answers, "the continued master answered nothing"
        assert all(r.code in (ErrorCode.NOT_LEADER, ErrorCode.BROKER_SHUTTING_DOWN) for r in answers), \
            [(r.code, r.message) for r in answers]
        assert any("fenced" in r.message or "not acknowledged" in r.message for r in answers), \
            [(r.code, r.message) for r in answers]
        # it rejoins as b's slave, and the two logs agree
        wait_until(lambda: role_of(a) == "slave" and stats(a).get("replication_master") == b.url
                   and caught_up(b, a), 60, "the old master to follow", state=a.log)
        more = produce_stream(b.url, "t", 0.3, acks=-1)
        acked.update(more)
        wait_until(lambda: caught_up(b, a), 30, "the old master to catch up")
        assert_present(b, acked)
    finally:
        z.stop()
        stop_all(a, b)
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0 and r.stdout.count("SAME") == PARTITIONS, r.stdout + r.stderr


def test_a_master_restarted_before_its_session_expired_makes_one_master_with_its_slave(tmp_path, zk):
    """kill -9 and an immediate restart (a service manager's): the restarted
    broker deletes its old registration and claims a new epoch while its
    slave, seeing the registration go, may claim one too; the epoch znode's
    version lets one of them lead, and the other follows it."""
    hosts = chroot(zk)
    a = broker(tmp_path, "a", hosts, "master", 1)
    b = broker(tmp_path, "b", hosts, "slave", 2)
    z = zk_client(hosts)
    a2 = None
    try:
        wait_until(lambda: node(z, paths.master(1)).insync == [2], 30, "the slave in sync")
        acked = produce_stream(a.url, "q", 1.0, acks=-1, kill=a.kill)
        a2 = broker(tmp_path, "a", hosts, "master", 1, port=a.port)
        roles = {}

        def settled():
            roles.update({1: role_of(a2) or "", 2: role_of(b) or ""})
            return sorted(roles.values()) == ["master", "slave"] and node(z, paths.master(1)) is not None

        wait_until(settled, 60, "one master and one slave", state=lambda: roles)
        lead, follow = (a2, b) if roles[1] == "master" else (b, a2)
        ep = node(z, paths.epoch(1), paths.EpochNode)
        assert ep.broker_id == (1 if lead is a2 else 2) and ep.epoch == stats(lead)["leader_epoch"]
        assert node(z, paths.master(1)).url == lead.url
        wait_until(lambda: stats(follow).get("replication_master") == lead.url and caught_up(lead, follow), 60,
                   "the other to follow and catch up", state=follow.log)
        assert_present(lead, acked)
    finally:
        z.stop()
        stop_all(a2, b)
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0 and r.stdout.count("SAME") == PARTITIONS, r.stdout + r.stderr


@pytest.mark.parametrize("unclean", [False, True])
def test_an_async_slave_promotes_itself_only_with_unclean_promotion(tmp_path, zk, unclean):
    hosts = chroot(zk)
    extra = f"unclean_promotion = {'true' if unclean else 'false'}"
    a = broker(tmp_path, "a", hosts, "master", 1, mode="async", extra=extra)
    b = broker(tmp_path, "b", hosts, "slave", 2, mode="async", extra=extra)
    try:
        wait_until(lambda: stats(b).get("replication_state") == "streaming", 30, "the slave to follow")
        produce_stream(a.url, "u", 0.3, acks=1)
        a.kill()
        if unclean:
            wait_until(lambda: role_of(b) == "master", 30, "the async slave to promote itself", state=b.log)
        else:
            wait_until(lambda: "not promoting: this slave replicates asynchronously" in b.log(), 30,
                       "the slave to refuse", state=b.log)
            assert role_of(b) == "slave"
    finally:
        stop_all(a, b)


@pytest.mark.parametrize("text, words", [
    ('[cluster]\nzookeeper = "127.0.0.1:2181"\n', "needs replication.role"),
    ('[replication]\nrole = "master"\n[cluster]\nzookeeper = "127.0.0.1:2181"\nsession_timeout_ms = 3000\n'
     "fence_after_ms = 3000\n", "must be less than"),
])
def test_a_cluster_config_that_cannot_fence_is_refused_in_one_line(tmp_path, text, words):
    p = tmp_path / "c.toml"
    p.write_text(text)
    r = subprocess.run([sys.executable, "-m", "hpbroker", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


class CuttableLink:
    """A TCP forwarder in front of ZooKeeper for one broker: ``cut()`` drops
    its connections and refuses new ones (a network partition between that
    broker and ZooKeeper, nothing else), ``heal()`` lets them through again."""

    def __init__(self, target_port: int):
        import socket

        self.target = ("127.0.0.1", target_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.open = True
        self.conns: list = []
        self.done = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        import socket

        while not self.done:
            try:
                c, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            if not self.open:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=2)
            except OSError:
                c.close()
                continue
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        self.open = False
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self.done = True
        self.cut()
        self.lsock.close()


def test_a_master_cut_off_from_zookeeper_but_alive_fences_itself_and_its_slave_takes_over(tmp_path, zk):
    """A partition between the master and ZooKeeper only: the master stops
    acknowledging, its session expires, its slave (which still reaches it)
    finds it answering but fenced and promotes; healed, the old master
    rejoins as a slave and no acknowledged write diverges."""
    root = f"t{uuid.uuid4().hex[:10]}"
    link = CuttableLink(zk.port)
    a = b = None
    z = zk_client(f"{zk.hosts}/{root}")
    try:
        a = broker(tmp_path, "a", f"127.0.0.1:{link.port}/{root}", "master", 1)
        b = broker(tmp_path, "b", f"{zk.hosts}/{root}", "slave", 2)
        wait_until(lambda: node(z, paths.master(1)).insync == [2], 30, "the slave in sync")
        acked = produce_stream(a.url, "n", 0.5, acks=-1)
        link.cut()
        wait_until(lambda: stats(a)["cluster_fenced"] == 1, 30, "the master to fence itself")
        c = RawClient(a.url, timeout_ms=10_000)
        req = m.Produce(id=c.next_id(), topic="rep", partition=0, acks=1)
        c.send_frames(codec.encode_request(req, [batch.encode_batch([b"cut off"])]))
        rep, _ = c.recv()
        c.close()
        assert rep.code == ErrorCode.NOT_LEADER and "fenced" in rep.message, rep
        wait_until(lambda: role_of(b) == "master", 30, "the slave to promote itself", state=b.log)
        link.heal()
        wait_until(lambda: role_of(a) == "slave" and stats(a).get("replication_master") == b.url
                   and caught_up(b, a), 60, "the old master to rejoin as a slave", state=a.log)
        acked.update(produce_stream(b.url, "m", 0.3, acks=-1))
        wait_until(lambda: caught_up(b, a), 30, "the old master to catch up")
        assert_present(b, acked)
        assert_present(a, acked)
    finally:
        z.stop()
        stop_all(a, b)
        link.close()
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0 and r.stdout.count("SAME") == PARTITIONS, r.stdout + r.stderr


class RestartableZooKeeper(ZooKeeperServer):
    """A private ZooKeeper that can be stopped and started again on the same port and data."""

    def halt(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(20)
        self._log.close()

    def resume(self, timeout: float = 60.0) -> None:
        from kazoo.client import KazooClient

        self._spawn([self.java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     "-Dzookeeper.admin.enableServer=false", "-Dzookeeper.jmx.log4j.disable=true",
                     "-cp", str(self.jar), "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                     str(self.dir / "zoo.cfg")])

        def ready():
            c = KazooClient(hosts=self.hosts, timeout=2.0)
            try:
                c.start(timeout=2.0)
            finally:
                c.stop()
                c.close()

        self._wait_ready(ready, timeout)


def test_zookeeper_stopped_and_restarted_under_load_loses_nothing_acknowledged(tmp_path):
    """ZooKeeper away for longer than the session timeout under acks=all load: the master fences
    itself (NOT_LEADER), nothing acknowledged is lost, and once ZooKeeper is back there is exactly
    one master taking acks.  Usually the old one (its session survives the server's restart); on a
    slow machine its session may expire at the restart, and then its in-sync slave may promote -
    legitimately, since the fenced master acknowledged nothing meanwhile - so the load follows
    whichever broker is master."""
    server = RestartableZooKeeper().start()
    hosts = f"{server.hosts}/load"
    a = b = None
    try:
        a = broker(tmp_path, "a", hosts, "master", 1)
        b = broker(tmp_path, "b", hosts, "slave", 2)
        z = zk_client(hosts)
        wait_until(lambda: node(z, paths.master(1)).insync == [2], 30, "the slave in sync")
        z.stop()
        acked: dict = {}
        codes: list[int] = []
        done = threading.Event()

        def master_url() -> str:
            return b.url if role_of(b) == "master" else a.url

        def load():
            url = a.url
            c = RawClient(url, timeout_ms=15_000)
            seq = 0
            while not done.is_set():
                p = seq % PARTITIONS
                first = f"z:{seq}:0"
                req = m.Produce(id=c.next_id(), topic="rep", partition=p, acks=-1, timeout_ms=5000)
                c.send_frames(codec.encode_request(req, [batch.encode_batch([first.encode()])]))
                try:
                    rep, _ = c.recv()
                except TimeoutError:
                    codes.append(-1)
                    rep = None
                if rep is not None:
                    codes.append(rep.code)
                if rep is not None and rep.code == 0:
                    acked[(p, first)] = rep.base_offsets[0]
                else:
                    time.sleep(0.05)
                    if master_url() != url:  # a promotion: follow it
                        c.close()
                        url = master_url()
                        c = RawClient(url, timeout_ms=15_000)
                seq += 1
            c.close()

        t = threading.Thread(target=load)
        t.start()
        time.sleep(1.0)
        server.halt()
        wait_until(lambda: stats(a)["cluster_fenced"] == 1, 30, "the master to fence itself")
        time.sleep(SESSION_MS / 1000 + 1.0)  # ZooKeeper away past the session timeout
        server.resume()
        wait_until(lambda: sorted([role_of(a) or "", role_of(b) or ""]) == ["master", "slave"]
                   and codes[-5:] == [0] * 5, 90, "one master, and acks to resume",
                   state=lambda: (codes[-10:], role_of(a), role_of(b)))
        done.set()
        t.join(30)
        assert ErrorCode.NOT_LEADER in codes  # fenced while ZooKeeper was away
        lead, follow = (a, b) if role_of(a) == "master" else (b, a)
        assert stats(lead)["cluster_fenced"] == 0  # and no more
        wait_until(lambda: caught_up(lead, follow), 60, "the slave to catch up")
        assert_present(lead, acked)
        assert_present(follow, acked)
    finally:
        stop_all(a, b)
        server.stop()


@pytest.mark.slow
def test_failover_cycles_with_the_old_master_rejoining(tmp_path, zk):
    """Five kill -9 / take-over / rejoin cycles (tools/bench-failover measures their time)."""
    hosts = chroot(zk)
    brokers = {1: broker(tmp_path, "a", hosts, "master", 1), 2: broker(tmp_path, "b", hosts, "slave", 2)}
    master_id, acked = 1, {}
    try:
        for cycle in range(5):
            slave_id = 3 - master_id
            mst, slv = brokers[master_id], brokers[slave_id]
            wait_until(lambda: caught_up(mst, slv) and role_of(slv) == "slave", 60, "the slave in sync")
            z = zk_client(hosts)
            wait_until(lambda: slave_id in (node(z, paths.master(1)) or paths.BrokerNode(0, 0, "", "", 0)).insync,
                       30, "the slave listed in sync")
            z.stop()
            acked.update(produce_stream(mst.url, f"c{cycle}", 1.0, acks=-1, kill=mst.kill))
            wait_until(lambda: role_of(slv) == "master", 30, "the slave to promote itself", state=slv.log)
            assert_present(slv, acked)
            name = "a" if master_id == 1 else "b"
            brokers[master_id] = broker(tmp_path, name, hosts, "master", master_id, port=mst.port)
            master_id = slave_id
        wait_until(lambda: caught_up(brokers[master_id], brokers[3 - master_id]), 60, "the last catch-up")
    finally:
        stop_all(*brokers.values())
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0 and r.stdout.count("SAME") == PARTITIONS, r.stdout + r.stderr


def _bn(broker_id: int, url: str = "tcp://h:1") -> paths.BrokerNode:
    return paths.BrokerNode(broker_id=broker_id, replica_set=1, url=url, role="master", epoch=1)


@pytest.mark.parametrize("master, epoch, preferred, action", [
    (_bn(1, "tcp://m:1"), paths.EpochNode(epoch=1, broker_id=1), "master", "follow"),  # another's master: follow it
    (_bn(1, "tcp://m:1"), None, "slave", "follow"),
    (None, None, "master", "lead"),  # the set's first master
    (None, None, "slave", "wait"),
    (None, paths.EpochNode(epoch=1026, broker_id=2), "slave", "lead"),  # its own epoch, nobody else master
    (None, paths.EpochNode(epoch=1, broker_id=1), "master", "wait"),  # another holds it: may hold acked messages
])
def test_the_start_decision_follows_its_table(master, epoch, preferred, action):
    from hpbroker.cluster.broker_agent import SetState, start_decision

    d = start_decision(2, preferred, SetState(master, 1 if master else 0, epoch, 0 if epoch else -1))
    assert d.action == action
    if action == "follow":
        assert d.url == master.url


def test_the_lease_runs_out_by_the_shared_monotonic_clock(tmp_path):
    from hpbroker.ipc.lease import Lease, path_of

    now = [100.0]
    w = Lease.create(path_of(tmp_path))
    r = Lease.open(path_of(tmp_path))
    r.clock = lambda: now[0]
    assert not r.valid()  # a new lease is fenced
    w.renew(104.0)
    assert r.valid() and not r.valid(104.0)
    now[0] = 105.0  # time passed (a stopped process's clock goes on too)
    assert not r.valid()
    w.renew(110.0)
    w.revoke()
    assert not r.valid()
    r.close(), w.close()
