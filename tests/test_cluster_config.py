"""The settings a cluster's brokers share, in ZooKeeper
(hpbroker/cluster/shared_config.py, ``hpbroker cluster config``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brokerproc import BrokerProcess
from hpbroker import Producer
from hpbroker.cluster import paths, shared_config
from test_cluster_broker import chroot, node, zk_client
from test_replication import wait_until
from servers import own_zookeeper


@pytest.fixture(scope="module")
def zookeeper_server():
    """This module's own ZooKeeper (servers.own_zookeeper): a group of its own under xdist."""
    yield from own_zookeeper()

SHARED = b"[broker]\ndefault_partitions = 3\n\n[log]\nretention_ms = 3600000\nsegment_bytes = 8388608\n"


def test_per_broker_keys_unknown_keys_and_bad_values_are_refused():
    assert shared_config.check(SHARED)["broker"] == {"default_partitions": 3}
    for text, says in ((b"[broker]\nport = 7700\n", "broker.port belongs to each broker"),
                       (b"[cluster]\nsession_timeout_ms = 9000\n", "cluster.session_timeout_ms belongs to each"),
                       (b"[log]\nno_such_key = 1\n", "no_such_key"),
                       (b"[broker]\ndefault_partitions = -4\n", "default_partitions"),
                       (b"[log\n", "shared")):
        with pytest.raises(shared_config.SharedConfigError, match=says):
            shared_config.check(text, "shared")


def test_the_keys_a_broker_sets_otherwise_are_named():
    shared = shared_config.check(SHARED)
    local = {"log": {"segment_bytes": 8388608, "flush_mode": "async"}, "broker": {"default_partitions": 5}}
    assert shared_config.overridden(shared, local) == ["broker.default_partitions"]


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "hpbroker", "cluster", *argv], capture_output=True, text=True,
                          timeout=60)


def test_a_broker_runs_the_shared_settings_says_where_it_differs_and_when_they_are_newer(tmp_path, zookeeper_server):
    hosts = chroot(zookeeper_server)
    f = tmp_path / "shared.toml"
    f.write_bytes(SHARED)
    r = cli("config", "show", "--zookeeper", hosts)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no shared settings" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker]\nport = 1\n")
    r = cli("config", "push", str(bad), "--zookeeper", hosts)
    assert r.returncode != 0 and "broker.port belongs to each broker" in r.stderr and r.stderr.count("\n") == 1
    r = cli("config", "push", str(f), "--zookeeper", hosts)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stderr
    own = tmp_path / "own.toml"
    own.write_text("[log]\nsegment_bytes = 16777216\n")
    b = BrokerProcess(tmp_path / "data", args=("--config", str(own), "--zookeeper", hosts, "--role", "master",
                                               "--broker-id", "1"))
    z = zk_client(hosts)
    try:
        b.start()
        with Producer(b.url, acks=1) as p:  # auto-created with broker.default_partitions: the cluster's 3
            p.send("t", b"x").get(30)
        wait_until(lambda: node(z, paths.master(1)) is not None, 30, "the registration")
        reg = node(z, paths.master(1))
        assert reg.config_version == 1 and reg.config_checksum > 0
        assert int(z.get(paths.config_checksum(1))[0]) == reg.config_checksum
        assert z.get(paths.topic_master("t", 1))[0] == b"3"
        log = b.log()
        assert "running the shared settings of version 1; this broker sets 1 of them itself" in log
        assert "log.segment_bytes = 16777216 here, not the cluster's 8388608" in log
        # a newer version: the running broker says so, and so does cluster status
        f.write_bytes(SHARED.replace(b"= 3", b"= 6"))
        assert cli("config", "push", str(f), "--zookeeper", hosts).returncode == 0
        wait_until(lambda: "shared settings in ZooKeeper are version 2; this broker runs version 1" in b.log(), 30,
                   "the broker to notice")
        r = cli("status", "--zookeeper", hosts)
        assert "v1 (v2 in ZooKeeper: restart to apply)" in r.stdout, r.stdout + r.stderr
        r = cli("config", "show", "--zookeeper", hosts)
        assert r.returncode == 0 and "version 2" in r.stdout and "default_partitions = 6" in r.stdout
    finally:
        z.stop()
        z.close()
        b.stop()
    # a hand-written, invalid version: a broker does not start on it, and says why in one line
    z = zk_client(hosts)
    try:
        z.set(paths.SHARED_CONFIG, paths.encode(paths.SharedConfig(version=3, toml="[broker]\nport = 1\n")))
    finally:
        z.stop()
        z.close()
    r = subprocess.run([sys.executable, "-m", "hpbroker", "serve", "--data-dir", str(tmp_path / "data2"),
                        "--zookeeper", hosts, "--role", "master", "--broker-id", "2", "--port", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "the cluster's shared settings cannot be used" in r.stderr
    assert "broker.port belongs to each broker" in r.stderr
