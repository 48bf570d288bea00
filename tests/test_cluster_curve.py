"""Cluster mode with CURVE on every socket (issues 22 and 26 together).

A replica set's two brokers share one key pair (docs/cluster.md, "Limits":
each is the master the other knows by ``security.master_public_key``), on a
real ZooKeeper.  A zk:// producer and consumer authenticate with their own
key; the slave replicates over CURVE as the set's principal; a kill -9 of
the master is followed by the slave's promotion, which probes the dead
master over CURVE; the old master comes back as the slave, also over CURVE.
Nothing acknowledged is lost, and a key the brokers do not know gets nothing
from either of them.
"""

from __future__ import annotations

import time

import pytest

from brokerproc import BrokerProcess
from hpbroker import Consumer, Producer
from rawclient import RawClient
from servers import own_zookeeper
from test_cluster_broker import chroot
from test_cluster_client import hpbroker
from test_security import Pki, _silent, _stats, _wait_ready

SET_KEY = "broker-a"  # the replica set's key pair, in both brokers (test_security.ACL grants it replicate)


@pytest.fixture(scope="module")
def zookeeper_server():
    """This module's own ZooKeeper (servers.own_zookeeper): a group of its own under xdist."""
    yield from own_zookeeper()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _broker(pki: Pki, tmp_path, name: str, hosts: str, role: str, broker_id: int) -> BrokerProcess:
    extra = (f'master_public_key = "{pki.public(SET_KEY)}"\n'
             '[replication]\nmode = "sync"\nmin_insync_replicas = 1\nreplica_lag_max_ms = 1500\nack_interval_ms = 50\n'
             "[ring]\ndead_after_ms = 60000\n[cluster]\nsession_timeout_ms = 2000\n")
    cfg = pki.config(tmp_path / f"etc-{name}", SET_KEY, ["alice", "ops", SET_KEY], extra)
    b = BrokerProcess(tmp_path / name, args=("--config", cfg, "--role", role, "--broker-id", str(broker_id),
                                             "--replica-set", "1", "--zookeeper", hosts, "--partitions", "2"))
    b.wait_ready = lambda timeout: _wait_ready(b, pki, timeout, broker_key=SET_KEY)
    return b


def _until(pred, what: str, *brokers, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - a broker down or not answering yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(b.log()[-3000:] for b in brokers))


def _role(b: BrokerProcess, pki: Pki) -> str | None:
    return _stats(b, pki, SET_KEY).get("role")


def test_a_curve_cluster_fails_over_and_back_losing_nothing(pki, zookeeper_server, tmp_path):
    hosts = chroot(zookeeper_server)
    url = "zk://" + hosts
    alice = pki.client("alice", SET_KEY)
    a = _broker(pki, tmp_path, "a", hosts, "master", 1).start()
    b = _broker(pki, tmp_path, "b", hosts, "slave", 2)
    try:
        b.start()
        _until(lambda: _stats(a, pki, SET_KEY).get("slave_2_insync") == 1, "b in sync over CURVE", a, b)
        r = hpbroker("topics", "create", "logs", "--partitions", "2", "--brokers", "1", "--zookeeper", hosts,
                     "--curve-secret-key-file", pki.secret("ops"), "--broker-public-key", pki.public(SET_KEY))
        assert r.returncode == 0, r.stderr
        with Producer(url, acks="all", **alice) as p:
            for i in range(100):
                p.send("logs", b"before %d" % i, key=b"%d" % i)
            p.flush(30)
        # a key neither broker knows: nothing from either
        for x in (a, b):
            c = RawClient(x.url, timeout_ms=1500, curve=pki.curve("mallory", SET_KEY))
            try:
                assert _silent(c)
            finally:
                c.close()

        a.kill()  # kill -9: b probes a over CURVE (refused), claims the epoch and promotes
        _until(lambda: _role(b, pki) == "master", "b to promote itself", b)
        with Producer(url, acks="all", **alice) as p:
            for i in range(100):
                p.send("logs", b"after %d" % i, key=b"%d" % i)
            p.flush(30)

        # the old master comes back with its old flags: a slave of b, over CURVE, in sync again
        a.start()
        _until(lambda: _role(a, pki) == "slave", "a to rejoin as a slave", a, b)
        _until(lambda: _stats(b, pki, SET_KEY).get("slave_1_insync") == 1, "a in sync with b", a, b)

        want = {b"before %d" % i for i in range(100)} | {b"after %d" % i for i in range(100)}
        got: list[bytes] = []
        with Consumer(url, "logs", group_id="curve-readers", auto_offset_reset="earliest", **alice) as c:
            deadline = time.monotonic() + 40
            while len(got) < len(want) and time.monotonic() < deadline:
                got += [msg.value for msg in c.poll(timeout_ms=500)]
        assert sorted(got) == sorted(want)  # every acknowledged message, once
        # and a, the slave now, holds them too
        _until(lambda: _stats(a, pki, SET_KEY).get("messages") == _stats(b, pki, SET_KEY).get("messages") >= 200,
               "a to hold what b holds", a, b)
    finally:
        for x in (b, a):
            x.stop()
