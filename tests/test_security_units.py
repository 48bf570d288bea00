"""[security] without a broker: ACL rules, what each request needs, the
per-request guard, the ZAP key policy, key files, config validation."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import zmq

from hpbroker import config
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.security import Acl, AclError, Guard, load_acl
from hpbroker.security.keys import KeyFileError, authorized_keys, generate
from hpbroker.security.requests import denied, requirements
from hpbroker.security.zap import CLIENT, REPLICATION, KeyPolicy
from hpbroker.sockets import Curve, public_key

ACL = b"""
[[allow]]
principals = ["alice", "app-*"]
topics = ["logs", "logs.*"]
actions = ["produce", "consume"]

[[allow]]
principals = ["reader"]
topics = ["metrics"]
actions = ["consume"]

[[allow]]
principals = ["ops"]
actions = ["admin"]

[[allow]]
principals = ["broker-b"]
actions = ["replicate"]
"""


@pytest.fixture
def acl() -> Acl:
    return Acl.parse(ACL)


@pytest.mark.parametrize("principal, action, topic, ok", [
    ("alice", "produce", "logs", True),
    ("alice", "consume", "logs.app.errors", True),  # a glob crosses dots
    ("alice", "produce", "logsx", False),  # "logs" is a name, not a prefix
    ("alice", "produce", "metrics", False),
    ("alice", "admin", "logs", False),
    ("app-7", "produce", "logs.web", True),  # principal globs
    ("app", "produce", "logs", False),
    ("reader", "consume", "metrics", True),
    ("reader", "produce", "metrics", False),
    ("ops", "admin", "anything", True),  # topics default to ["*"]
    ("ops", "admin", None, True),  # ... which covers the cluster
    ("alice", "produce", None, False),  # a topic-bound rule never grants the cluster
    ("broker-b", "replicate", None, True),
    ("broker-b", "consume", "logs", False),
    ("mallory", "consume", "logs", False),
])
def test_acl_grants_only_what_a_rule_says(acl, principal, action, topic, ok):
    assert acl.check(principal, action, topic) is ok
    assert acl.check(principal, action, topic) is ok  # the cached answer is the same


def test_an_empty_acl_refuses_everything():
    empty = Acl.parse(b"")
    assert not any(empty.check("ops", a, t) for a in ("produce", "consume", "admin", "replicate") for t in ("x", None))


@pytest.mark.parametrize("text, words", [
    (b'[[allow]]\nprincipals = ["a"]\nactions = ["write"]\n', "actions"),
    (b'[[allow]]\nprincipals = ["a"]\nactions = ["produce"]\nbogus = 1\n', "bogus"),
    (b'[[allow]]\nprincipals = []\nactions = ["produce"]\n', "non-empty"),
    (b'[[allow]]\nactions = ["produce"]\n', "principals"),
    (b'[[deny]]\nprincipals = ["a"]\n', "deny"),
    (b"[[allow]\n", "acl.toml"),
])
def test_a_bad_acl_file_is_one_line_naming_what_is_wrong(tmp_path, text, words):
    p = tmp_path / "acl.toml"
    p.write_bytes(text)
    with pytest.raises(AclError) as e:
        load_acl(str(p))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_missing_acl_file_is_an_error(tmp_path):
    with pytest.raises(AclError, match="No such file"):
        load_acl(str(tmp_path / "nope.toml"))


def test_what_each_request_needs():
    tp = [m.TopicPartitions("a", [0]), m.TopicPartitions("b", [1]), m.TopicPartitions("a", [2])]
    assert requirements(m.Produce(id=1, topic="t", partition=0)) == [(("produce",), "t")]
    assert requirements(m.ProduceMessages(id=1, topic="t")) == [(("produce",), "t")]
    assert requirements(m.Fetch(id=1, topic="t", partition=0, offset=0)) == [(("consume",), "t")]
    assert requirements(m.ListOffsets(id=1, topic="t", partition=0, spec=-1)) == [(("consume",), "t")]
    assert requirements(m.Metadata(id=1)) == []
    assert requirements(m.Metadata(id=1, topics=["x", "y", "x"])) == [(("produce", "consume", "admin"), "x"),
                                                                      (("produce", "consume", "admin"), "y")]
    assert requirements(m.CreateTopic(id=1, topic="t", partitions=1)) == [(("admin",), "t")]
    assert requirements(m.Stats(id=1)) == [(("admin",), None)]
    assert requirements(m.Promote(id=1)) == [(("admin",), None)]
    assert requirements(m.GroupHeartbeat(id=1, group="g", topics=["a", "b"])) == [(("consume",), "a"), (("consume",), "b")]
    entries = [m.OffsetEntry("a", 0, 5), m.OffsetEntry("a", 1, 5), m.OffsetEntry("b", 0, 1)]
    assert requirements(m.OffsetCommit(id=1, group="g", member_id="m1", member_epoch=3, offsets=entries)) == \
        [(("consume",), "a"), (("consume",), "b")]
    # no member: an offset reset by an operator
    assert requirements(m.OffsetCommit(id=1, group="g", offsets=entries)) == [(("admin",), "a"), (("admin",), "b")]
    assert requirements(m.OffsetFetch(id=1, group="g", partitions=tp)) == [(("consume",), "a"), (("consume",), "b")]
    assert requirements(m.OffsetFetch(id=1, group="g")) == []
    for open_req in (m.InitProducerId(id=1), m.FindCoordinator(id=1, group="g"), m.ListGroups(id=1),
                     m.DescribeGroup(id=1, group="g")):
        assert requirements(open_req) == []


def test_a_request_type_the_table_does_not_know_needs_cluster_admin(acl):
    class Future(m.Stats):  # stands for a request added later (transactions)
        pass

    assert requirements(Future(id=1)) == [(("admin",), None)]
    assert denied(acl, "alice", Future(id=1)) == ("admin", None)
    assert denied(acl, "ops", Future(id=1)) is None


def test_denied_names_the_first_missing_right(acl):
    assert denied(acl, "alice", m.Produce(id=1, topic="logs", partition=0)) is None
    assert denied(acl, "alice", m.Metadata(id=1, topics=["logs", "metrics"])) == ("produce/consume/admin", "metrics")
    assert denied(acl, "reader", m.Metadata(id=1, topics=["metrics"])) is None
    assert denied(acl, "alice", m.OffsetCommit(id=1, group="g", offsets=[m.OffsetEntry("logs", 0, 1)])) == ("admin", "logs")


class _Frame:
    """What the guard reads of a zmq.Frame: its User-Id property."""

    def __init__(self, user: str):
        self.user = user

    def get(self, prop: str) -> str:
        assert prop == "User-Id"
        return self.user


def test_the_guard_refuses_with_not_authorized_and_a_log_line_naming_the_principal(acl, caplog):
    now = [100.0]
    g = Guard(acl, clock=lambda: now[0])
    g.check(_Frame("alice"), m.Produce(id=1, topic="logs", partition=0))  # allowed: no exception
    with caplog.at_level(logging.WARNING, logger="hpbroker.security"):
        for _ in range(3):
            with pytest.raises(BrokerError) as e:
                g.check(_Frame("alice"), m.Fetch(id=1, topic="metrics", partition=0, offset=0))
            assert e.value.code == ErrorCode.NOT_AUTHORIZED and "alice" in e.value.message
        now[0] += 11
        with pytest.raises(BrokerError):
            g.check(_Frame("alice"), m.Fetch(id=2, topic="metrics", partition=0, offset=0))
    lines = [r.getMessage() for r in caplog.records]
    # one line, then one more after 10 s counting the refusals in between
    assert len(lines) == 2 and all("principal alice may not consume on topic metrics (Fetch)" in x for x in lines)
    assert "3 such refusals" in lines[1]
    assert g.denials == 4
    with pytest.raises(BrokerError) as e:
        g.allow("alice", "admin", "logs", "a transaction")
    assert e.value.code == ErrorCode.NOT_AUTHORIZED
    g.allow("ops", "admin", "logs")


def test_the_zap_policy_admits_known_keys_and_replicate_only_for_granted_principals(acl, caplog):
    keys = {b"A" * 40: "alice", b"B" * 40: "broker-b"}
    now = [0.0]
    p = KeyPolicy(keys, acl, clock=lambda: now[0])
    assert p.admit(CLIENT, b"A" * 40) == "alice"
    assert p.admit(CLIENT, b"B" * 40) == "broker-b"
    assert p.admit(REPLICATION, b"B" * 40) == "broker-b"
    with caplog.at_level(logging.WARNING, logger="hpbroker.security"):
        assert p.admit(REPLICATION, b"A" * 40, "10.0.0.9") is None  # alice may not replicate
        assert p.admit(CLIENT, b"X" * 40, "10.0.0.8") is None
        assert p.admit(CLIENT, b"X" * 40, "10.0.0.8") is None  # the same key again within a minute: no new line
        assert p.admit("other", b"A" * 40) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "from 10.0.0.9: principal alice is not granted replicate" in lines[0]
    assert "from 10.0.0.8: unknown key" in lines[1] and "X" * 40 in lines[1]


def test_generated_keys_are_owner_only_and_load_back(tmp_path):
    d = tmp_path / "keys"
    public, secret = generate(str(d), "alice")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    c = Curve.load(secret, server_key=public)
    assert len(c.public) == len(c.secret) == 40 and c.server_key == c.public
    assert public_key(public) == c.public == public_key(c.public.decode())
    assert zmq.curve_public(c.secret) == c.public  # the pair belongs together
    with pytest.raises(KeyFileError, match="exists"):
        generate(str(d), "alice")
    assert generate(str(d), "alice", force=True)
    with pytest.raises(ValueError, match="no secret key"):
        Curve.load(public)
    with pytest.raises(KeyFileError, match="bad key name"):
        generate(str(d), "../x")


def test_authorized_keys_maps_each_public_key_to_its_file_name(tmp_path):
    d = tmp_path / "k"
    generate(str(d), "alice"), generate(str(d), "bob")
    keys = authorized_keys(str(d))
    assert sorted(keys.values()) == ["alice", "bob"]  # secret files are not *.key
    (d / "carol.key").write_bytes((d / "alice.key").read_bytes())
    with pytest.raises(KeyFileError, match="same public key"):
        authorized_keys(str(d))
    with pytest.raises(KeyFileError, match="not a directory"):
        authorized_keys(str(tmp_path / "none"))


def test_curve_config_needs_its_files_named():
    with pytest.raises(config.ConfigError, match="server_secret_key_file, security.authorized_keys_dir, security.acl_file"):
        config.load(security__curve=True)
    full = dict(security__curve=True, security__server_secret_key_file="k", security__authorized_keys_dir="d",
                security__acl_file="a")
    assert config.load(**full).security.curve
    with pytest.raises(config.ConfigError, match="master_public_key"):
        config.load(**full, replication__role="slave", replication__master="tcp://127.0.0.1:1")


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("10.1.2.3", False), ("::", False), ("example.com", False),
])
def test_listeners_without_auth_may_only_bind_loopback_under_curve(address, loopback):
    assert config.is_loopback(address) is loopback
    config.check_listeners_under_curve(False, [("http.bind", address)])  # CURVE off: anything goes
    if loopback:
        config.check_listeners_under_curve(True, [("http.bind", address)])
    else:
        with pytest.raises(ValueError, match="http.bind"):
            config.check_listeners_under_curve(True, [("http.bind", address)])
