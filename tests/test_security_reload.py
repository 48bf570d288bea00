"""Edits of the ACL and of the trusted keys, taken while the broker runs
(hpbroker/security/reload.py): units with a fake clock, then a real CURVE
broker whose rules and keys change under a connected client."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from brokerproc import BrokerProcess
from hpbroker import batch
from hpbroker.protocol.errors import ErrorCode
from hpbroker.security.reload import Reloader
from rawclient import RawClient
from test_security import ACL, Pki, _silent, _wait_ready

NARROW = ACL.replace('topics = ["logs", "logs.*"]', 'topics = ["logs.*"]')  # alice loses "logs" itself


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _bump(path):
    """Make an edit visible even within one mtime tick."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _reloader(tmp_path, pki, every=1.0):
    etc = tmp_path / "etc"
    pki.config(etc, "broker", ["alice", "bob"])
    clock = Clock()
    return etc, clock, Reloader(str(etc / "acl.toml"), str(etc / "authorized"), every, clock=clock)


def test_nothing_is_read_again_before_the_interval_or_when_nothing_changed(tmp_path, pki):
    etc, clock, r = _reloader(tmp_path, pki)
    assert r.poll() == (None, None)
    (etc / "acl.toml").write_text(NARROW)
    _bump(etc / "acl.toml")
    clock.t = 0.5
    assert r.poll() == (None, None)  # not yet due
    clock.t = 1.0
    acl, keys = r.poll()
    assert keys is None and acl is not None
    assert not acl.check("alice", "produce", "logs") and acl.check("alice", "produce", "logs.x")
    clock.t = 2.0
    assert r.poll() == (None, None) and r.reloads == 1  # taken once


def test_an_added_and_a_removed_key_change_the_trusted_set(tmp_path, pki):
    etc, clock, r = _reloader(tmp_path, pki)
    shutil.copy(pki.public("ops"), etc / "authorized" / "ops.key")
    (etc / "authorized" / "bob.key").unlink()
    clock.t = 1.0
    acl, keys = r.poll()
    assert acl is None and sorted(keys.values()) == ["alice", "ops"]


def test_an_invalid_edit_keeps_the_rules_in_force_and_says_why(tmp_path, pki, caplog):
    etc, clock, r = _reloader(tmp_path, pki)
    (etc / "acl.toml").write_text("[[allow]]\nprincipals = [\n")
    _bump(etc / "acl.toml")
    shutil.copy(pki.public("alice"), etc / "authorized" / "alice-again.key")  # one key, two names
    clock.t = 1.0
    with caplog.at_level("ERROR", logger="hpbroker.security"):
        assert r.poll() == (None, None)
    assert r.rejected == 2 and r.reloads == 0
    text = caplog.text
    assert "kept the rules in force" in text and "acl.toml" in text and "one key, one principal" in text
    # the same bad edit is not reported again; a fixed one is taken
    clock.t = 2.0
    assert r.poll() == (None, None) and r.rejected == 2
    (etc / "acl.toml").write_text(NARROW)
    _bump(etc / "acl.toml")
    clock.t = 3.0
    assert r.poll()[0] is not None


def test_reload_ms_zero_reads_only_at_start(tmp_path, pki):
    etc, clock, r = _reloader(tmp_path, pki, every=0)
    (etc / "acl.toml").write_text(NARROW)
    _bump(etc / "acl.toml")
    clock.t = 100.0
    assert r.poll() == (None, None)


def test_a_running_broker_takes_a_narrowed_acl_and_a_revoked_key(tmp_path, pki):
    etc = tmp_path / "etc"
    b = BrokerProcess(tmp_path / "data", args=("--config", pki.config(etc, "broker", ["alice", "bob", "ops"]),
                                                "--partitions", "1"))
    b.wait_ready = lambda timeout: _wait_ready(b, pki, timeout)
    b.start()
    alice = RawClient(b.url, timeout_ms=5000, curve=pki.curve("alice"))
    try:
        assert alice.produce("logs", 0, [batch.encode_batch([b"before"])]).code == 0
        # the rule narrows: the same connection is refused from then on, with a line naming alice
        (etc / "acl.toml").write_text(NARROW)
        _bump(etc / "acl.toml")
        deadline = time.monotonic() + 30
        while (code := alice.produce("logs", 0, [batch.encode_batch([b"after"])]).code) == 0:
            assert time.monotonic() < deadline, "the narrowed ACL was not taken"
            time.sleep(0.2)
        assert code == ErrorCode.NOT_AUTHORIZED
        assert alice.produce("logs.app", 0, [batch.encode_batch([b"still"])]).code == 0
        # a removed key: new connections with it get nothing at all
        (etc / "authorized" / "bob.key").unlink()
        deadline = time.monotonic() + 30
        while True:
            bob = RawClient(b.url, timeout_ms=1000, curve=pki.curve("bob"))
            try:
                if _silent(bob, wait_ms=1000):
                    break
            finally:
                bob.close()
            assert time.monotonic() < deadline, "the revoked key still connects"
        # a broken edit leaves the narrowed rules serving
        (etc / "acl.toml").write_text("not toml [")
        _bump(etc / "acl.toml")
        time.sleep(2.5)
        assert alice.produce("logs", 0, [batch.encode_batch([b"again"])]).code == ErrorCode.NOT_AUTHORIZED
        assert alice.produce("logs.app", 0, [batch.encode_batch([b"ok"])]).code == 0
    finally:
        alice.close()
        b.stop()
    log = b.log()
    assert "ACL reloaded from" in log and "trusted keys reloaded from" in log
    assert "kept the rules in force" in log
