"""One role, said once: replication settings that contradict the role are
refused at start, acks=all is never acknowledged with fewer in-sync replicas
than configured, and a slave that cannot follow its master says so in its
stats (``ready`` 0 and ``ready_reason``; docs/replication.md, "One role,
said once")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brokerproc import BrokerProcess, free_port
from hpbroker import batch, config
from hpbroker.net.readiness import readiness
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from rawclient import RawClient
from test_replication import master, slave, stats, wait_until


@pytest.mark.parametrize(
    "toml, flags, words",
    [
        # the case: sync mode in the TOML, no --role: it used to run standalone
        ('[replication]\nmode = "sync"\n', {}, "replication.mode set but replication.role is not"),
        ("[replication]\nmin_insync_replicas = 2\n", {}, "replication.min_insync_replicas set"),
        ('[replication]\nmaster = "tcp://10.0.0.1:7600"\n', {}, "replication.master set"),
        ("", {"replication__mode": "async"}, "replication.mode set"),  # --replication-mode without --role
        ('[replication]\nrole = "master"\nmaster = "tcp://10.0.0.1:7600"\n', {}, "only a slave follows"),
        ('[replication]\nrole = "standalone"\nmaster = "tcp://10.0.0.1:7600"\n', {}, "only a slave follows"),
        ('[replication]\nrole = "master"\nmode = "async"\nmin_insync_replicas = 2\n', {}, "mode is 'async'"),
        ('[replication]\nrole = "slave"\nmaster = "tcp://127.0.0.1:7600"\n', {}, "cannot follow itself"),
        ('[broker]\nport = 7700\n[replication]\nrole = "slave"\nmaster = "tcp://localhost:7700"\n', {}, "itself"),
    ],
)
def test_replication_settings_that_contradict_the_role_are_refused(tmp_path, toml, flags, words):
    p = tmp_path / "b.toml"
    p.write_text(toml)
    with pytest.raises(config.ConfigError, match=words):
        config.load(p, **flags)


@pytest.mark.parametrize(
    "toml, flags",
    [
        ("", {}),  # the defaults: standalone (mode's default "sync" is no statement)
        ('[replication]\nmode = "sync"\n', {"replication__role": "master"}),  # a shared TOML, the role by flag
        ('[replication]\nrole = "standalone"\nmode = "sync"\n', {}),  # standalone, said explicitly
        ('[replication]\nrole = "master"\nmode = "async"\n', {}),
        ('[replication]\nrole = "master"\nmin_insync_replicas = 1\n', {}),
        ('[replication]\nrole = "slave"\nmaster = "tcp://127.0.0.1:7601"\n', {}),
        ('[broker]\nbind = "0.0.0.0"\n[replication]\nrole = "slave"\nmaster = "tcp://10.0.0.7:7600"\n', {}),
    ],
)
def test_consistent_settings_load(tmp_path, toml, flags):
    p = tmp_path / "b.toml"
    p.write_text(toml)
    config.load(p, **flags)


def test_the_effective_config_that_config_show_prints_loads_again(tmp_path):
    for role_flags in ([], ["--role", "master"]):
        src = tmp_path / "src.toml"
        src.write_text("" if not role_flags else '[replication]\nrole = "master"\nmode = "sync"\n')
        r = subprocess.run([sys.executable, "-m", "hpbroker", "config", "show", "--config", str(src)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        shown = tmp_path / "shown.toml"
        shown.write_text(r.stdout)
        assert config.load(shown) == config.load(src)


def test_serve_refuses_sync_mode_without_a_role_with_one_line_and_exit_2(tmp_path):
    cfg = tmp_path / "sync.toml"
    cfg.write_text('[replication]\nmode = "sync"\n')
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "hpbroker", "serve", "--config", str(cfg), "--port", str(port),
                        "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "replication.role" in r.stderr, r.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was touched


def test_readiness_by_role_and_replicator_report():
    assert readiness("standalone", {}) == (1, "")
    assert readiness("master", {"slave_2_insync": 0}) == (1, "")
    assert readiness("slave", {}) == (0, "the replicator has not reported yet")
    ready, why = readiness("slave", {"replication_state": "refused", "replication_master": "tcp://a:1",
                                     "replication_detail": "tcp://a:1 does not serve replication (is it a master?)"})
    assert ready == 0 and why == ("not following tcp://a:1: refused: tcp://a:1 does not serve replication "
                                  "(is it a master?)")
    assert readiness("slave", {"replication_state": "disconnected", "replication_master": "tcp://a:1",
                               "replication_detail": ""}) == (0, "not following tcp://a:1: disconnected")
    streaming = {"replication_state": "streaming", "replication_master": "tcp://a:1", "replication_paused": 0,
                 "replication_stopped_partitions": "", "replication_catching_up": 3}
    assert readiness("slave", streaming) == (1, "")  # catching up is following
    ready, why = readiness("slave", {**streaming, "replication_stopped_partitions": "t/0: no space left on device"})
    assert ready == 0 and "t/0: no space left on device" in why
    ready, why = readiness("slave", {**streaming, "replication_paused": 2})
    assert ready == 0 and "2 partition(s)" in why


def test_a_slave_of_a_broker_that_is_no_master_is_not_ready_and_says_why(tmp_path):
    """The issue's pair, as it is still possible with explicit flags: the
    "master" is standalone.  Its slave is not ready and names the reason;
    pointed at a real sync master it becomes ready, and that master, while
    it has no slave in sync, refuses acks=all rather than acknowledge it
    with one replica of the two configured."""
    alone = BrokerProcess(tmp_path / "alone", args=("--role", "standalone")).start()
    b = slave(tmp_path, "b", alone)
    a = None
    try:
        wait_until(lambda: "does not serve replication" in stats(b).get("ready_reason", ""), 30,
                   "the slave to say why it is not ready", state=lambda: stats(b))
        s = stats(b)
        assert s["ready"] == 0 and s["ready_reason"].startswith(f"not following {alone.url}: refused")
        assert stats(alone)["ready"] == 1
        b.stop()
        a = master(tmp_path, "a")
        c = RawClient(a.url)
        rep = c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=-1), [batch.encode_batch([b"x"])])[0]
        assert rep.code == ErrorCode.NOT_ENOUGH_REPLICAS, rep  # one replica of the two configured: no ack
        assert c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=1),
                      [batch.encode_batch([b"y"])])[0].code == 0
        b = slave(tmp_path, "b", a, port=b.port)
        wait_until(lambda: stats(b).get("ready") == 1 and stats(a).get("slave_2_insync") == 1, 30,
                   "the slave to follow", state=lambda: stats(b))
        assert stats(b)["ready_reason"] == ""
        rep = c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=-1), [batch.encode_batch([b"z"])])[0]
        assert rep.code == 0, rep
        c.close()
    finally:
        b.stop()
        alone.stop()
        if a is not None:
            a.stop()
