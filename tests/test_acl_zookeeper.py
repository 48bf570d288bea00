"""The cluster's ACL in ZooKeeper (hpbroker/cluster/acl_store.py,
``hpbroker acl``), against a real ZooKeeper."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hpbroker.cluster import paths
from hpbroker.cluster.acl_store import MIRROR_NAME, AclMirror, push_acl, read_acl
from hpbroker.security.acl import Acl, AclError
from servers import own_zookeeper


@pytest.fixture(scope="module")
def zookeeper_server():
    """This module's own ZooKeeper (servers.own_zookeeper): a group of its own under xdist."""
    yield from own_zookeeper()

ACL = b'[[allow]]\nprincipals = ["alice"]\ntopics = ["logs.*"]\nactions = ["produce"]\n'
WIDER = ACL.replace(b'["produce"]', b'["produce", "consume"]')


@pytest.fixture
def zk(zookeeper_server):
    c = zookeeper_server.client()
    root = f"/acl-test-{os.getpid()}-{time.monotonic_ns()}"
    c.ensure_path(root)
    c.chroot = root  # every path below is under this test's own root
    yield c
    c.chroot = ""
    c.delete(root, recursive=True)
    c.stop()
    c.close()


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_push_writes_metaqs_tree_and_versions(zk):
    assert read_acl(zk) is None
    assert push_acl(zk, ACL) == 0
    assert push_acl(zk, WIDER) == 1
    assert read_acl(zk) == (WIDER, 1)
    assert zk.get(paths.ACL)[0] == WIDER
    with pytest.raises(AclError, match="mine.toml"):
        push_acl(zk, b"[[allow]]\nprincipals = [", "mine.toml")
    assert read_acl(zk) == (WIDER, 1)  # a bad push changes nothing


def test_the_mirror_follows_valid_versions_and_keeps_the_last_valid_one(zk, tmp_path, caplog):
    push_acl(zk, ACL)
    m = AclMirror(zk, tmp_path)
    m.start()
    mirror = tmp_path / MIRROR_NAME
    wait_until(lambda: mirror.exists() and mirror.read_bytes() == ACL)
    assert oct(mirror.stat().st_mode & 0o777) == "0o600"
    push_acl(zk, WIDER)
    wait_until(lambda: mirror.read_bytes() == WIDER)
    assert Acl.parse(mirror.read_bytes()).check("alice", "consume", "logs.app")
    with caplog.at_level("ERROR", logger="hpbroker.cluster"):
        zk.set(paths.ACL, b"written by hand [")  # not through acl push
        wait_until(lambda: m.rejected == 1)
    assert mirror.read_bytes() == WIDER and "kept the rules in force" in caplog.text
    zk.delete(paths.ACL)
    time.sleep(0.3)
    assert mirror.read_bytes() == WIDER  # no node: the rules in force stay


def run(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "hpbroker", "acl", *argv], capture_output=True, text=True,
                          timeout=60, **kw)


def test_the_acl_command(zookeeper_server, zk, tmp_path):
    hosts = zookeeper_server.hosts + zk.chroot
    f = tmp_path / "acl.toml"
    f.write_bytes(ACL)
    assert run("check", str(f)).stdout.strip() == f"{f}: 1 rules"
    r = run("show", "--zookeeper", hosts)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no ACL in ZooKeeper" in r.stderr
    r = run("push", str(f), "--zookeeper", hosts)
    assert r.returncode == 0 and "as version 0" in r.stdout, r.stderr
    r = run("show", "--zookeeper", hosts)
    assert r.returncode == 0 and r.stdout.endswith(ACL.decode()) and "version 0" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[[allow]]\nactions = [\n")
    for argv in (("check", str(bad)), ("push", str(bad), "--zookeeper", hosts), ("check", str(tmp_path / "none"))):
        r = run(*argv)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, (argv, r.stderr)
    assert read_acl(zk)[1] == 0  # the bad push wrote nothing
    r = run("show", "--zookeeper", "127.0.0.1:1", "--timeout", "1")
    assert r.returncode != 0 and "cannot reach ZooKeeper at 127.0.0.1:1" in r.stderr


def test_a_cluster_broker_takes_its_acl_from_zookeeper_and_follows_a_push(tmp_path, zookeeper_server):
    """security.acl_source = zookeeper: no ACL in ZooKeeper and none mirrored -> the broker does not
    start (one line); after a push it serves that ACL, and a later push is taken while it runs."""
    from brokerproc import BrokerProcess
    from hpbroker import batch
    from hpbroker.protocol.errors import ErrorCode
    from kazoo.client import KazooClient
    from rawclient import RawClient
    from test_security import Pki, _wait_ready

    pki = Pki(tmp_path / "pki")
    hosts = f"{zookeeper_server.hosts}/acl{os.getpid()}x{time.monotonic_ns()}"
    etc = tmp_path / "etc"
    cfg = pki.config(etc, "broker", ["alice", "ops"],
                     extra=f'acl_source = "zookeeper"\n[cluster]\nzookeeper = "{hosts}"\nsession_timeout_ms = 2000\n')
    (etc / "acl.toml").unlink()  # not used: the ACL is ZooKeeper's
    with open(cfg) as f:
        body = f.read()
    with open(cfg, "w") as f:
        f.write("\n".join(x for x in body.splitlines() if not x.startswith("acl_file")) + "\n")
    b = BrokerProcess(tmp_path / "data", args=("--config", cfg, "--partitions", "1", "--role", "master", "--broker-id", "1"))
    b.wait_ready = lambda timeout: _wait_ready(b, pki, timeout)
    with pytest.raises(RuntimeError):
        b.start(timeout=30)
    assert "ZooKeeper has no valid ACL at /meta/config/acl" in b.log()
    b.stop()
    zk = KazooClient(hosts=hosts)
    zk.start(10)
    try:
        push_acl(zk, ACL + b'\n[[allow]]\nprincipals = ["ops"]\nactions = ["admin", "produce", "consume"]\n')
        b = BrokerProcess(tmp_path / "data", args=("--config", cfg, "--partitions", "1", "--role", "master", "--broker-id", "1"))
        b.wait_ready = lambda timeout: _wait_ready(b, pki, timeout)
        b.start()
        alice = RawClient(b.url, timeout_ms=5000, curve=pki.curve("alice"))
        try:
            assert alice.produce("logs.app", 0, [batch.encode_batch([b"x"])]).code == 0
            assert alice.produce("logs", 0, [batch.encode_batch([b"x"])]).code == ErrorCode.NOT_AUTHORIZED
            push_acl(zk, ACL.replace(b'["logs.*"]', b'["logs", "logs.*"]'))
            deadline = time.monotonic() + 30
            while alice.produce("logs", 0, [batch.encode_batch([b"y"])]).code != 0:
                assert time.monotonic() < deadline, "the pushed ACL was not taken"
                time.sleep(0.2)
        finally:
            alice.close()
            b.stop()
        assert (tmp_path / "data" / MIRROR_NAME).exists()
        assert "mirrored the cluster's ACL" in b.log() and "ACL reloaded from" in b.log()
    finally:
        zk.stop()
        zk.close()
