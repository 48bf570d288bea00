"""[security] with real brokers: CURVE on every socket, ACLs per request,
replication over CURVE, owner-only local files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from brokerproc import BrokerProcess
from hpbroker import Admin, Consumer, Producer, batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.replication import messages as rm
from hpbroker.security.keys import generate
from hpbroker.sockets import load_certificate
from rawclient import RawClient

NAMES = ("broker", "alice", "bob", "ops", "mallory", "broker-a", "broker-b")

ACL = """
[[allow]]
principals = ["alice"]
topics = ["logs", "logs.*"]
actions = ["produce", "consume"]

[[allow]]
principals = ["ops"]
actions = ["admin", "produce", "consume"]

[[allow]]
principals = ["broker-a", "broker-b"]
actions = ["replicate"]
"""


class Pki:
    """Key pairs for every NAME in ``root/keys``; ``authorized(dir, names)``
    makes a broker's authorized_keys_dir of some of their public certificates."""

    def __init__(self, root: Path):
        self.root = root
        self.keys = root / "keys"
        for n in NAMES:
            generate(str(self.keys), n)

    def secret(self, name: str) -> str:
        return str(self.keys / f"{name}.key_secret")

    def public(self, name: str) -> str:
        return str(self.keys / f"{name}.key")

    def curve(self, name: str, broker: str = "broker") -> tuple[bytes, bytes, bytes]:
        pub, sec = load_certificate(self.secret(name))
        return pub, sec, load_certificate(self.public(broker))[0]

    def client(self, name: str, broker: str = "broker") -> dict:
        return {"curve_secret_key_file": self.secret(name), "broker_public_key": self.public(broker)}

    def config(self, where: Path, me: str, trusted, extra: str = "") -> str:
        """A broker config in ``where`` (a new directory): its key pair is
        ``me``'s, it trusts the keys of ``trusted`` and its ACL is ACL."""
        d = where / "authorized"
        d.mkdir(parents=True)
        for t in trusted:
            (d / f"{t}.key").write_bytes((self.keys / f"{t}.key").read_bytes())
        (where / "acl.toml").write_text(ACL)
        p = where / "broker.toml"
        p.write_text(f'[security]\ncurve = true\nserver_secret_key_file = "{self.secret(me)}"\n'
                     f'authorized_keys_dir = "{d}"\nacl_file = "{where / "acl.toml"}"\n{extra}')
        return str(p)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(pki, tmp_path_factory):
    """One CURVE broker for the module: it trusts alice, bob and ops (not mallory)."""
    root = tmp_path_factory.mktemp("secured")
    b = BrokerProcess(root / "data", args=("--config", pki.config(root / "etc", "broker", ["alice", "bob", "ops"]),
                                           "--partitions", "2"))
    b.wait_ready = lambda timeout: _wait_ready(b, pki, timeout)  # a plain readiness probe gets no answer now
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _wait_ready(b: BrokerProcess, pki: Pki, timeout: float, who: str = "ops", broker_key: str = "broker") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {b.proc.returncode} during start:\n{b.log()}")
        c = RawClient(b.url, timeout_ms=500, curve=pki.curve(who, broker_key))
        try:
            rep, _ = c.call(m.Metadata(id=c.next_id(), topics=[]))
            if rep.code == 0 and all(rep.acceptors):
                return
        except TimeoutError:
            pass
        finally:
            c.close()
        time.sleep(0.1)
    raise RuntimeError(f"broker not ready after {timeout} s:\n{b.log()}")


def _stats(b: BrokerProcess, pki: Pki, broker_key: str = "broker") -> dict:
    c = RawClient(b.url, timeout_ms=5000, curve=pki.curve("ops", broker_key))
    try:
        rep, _ = c.call(m.Stats(id=c.next_id()))
        assert rep.code == 0, rep
        return rep.stats
    finally:
        c.close()


def _silent(c: RawClient, wait_ms: int = 1500) -> bool:
    """Send a metadata request, a produce and a fetch; True when nothing at all comes back.
    A socket whose handshake was refused may have no pipe to queue on between its reconnects, and a
    DEALER's send then blocks: a send that cannot even be queued within a second got nothing either."""
    c.sock.setsockopt(zmq.SNDTIMEO, 1000)
    try:
        c.send_frames(codec.encode_request(m.Metadata(id=c.next_id(), topics=[])))
        c.send_frames(codec.encode_request(m.Produce(id=c.next_id(), topic="logs", partition=0, acks=1),
                                           [batch.encode_batch([b"intruder"])]))
        c.send_frames(codec.encode_request(m.Fetch(id=c.next_id(), topic="logs", partition=0, offset=0)))
    except zmq.Again:
        pass  # not even queued: nothing can come back for it; still listen for anything else
    try:
        c.recv(timeout_ms=wait_ms)
    except TimeoutError:
        return True
    return False


def test_an_unknown_key_gets_nothing(secured, pki):
    before = _stats(secured, pki)["messages"]
    stranger = RawClient(secured.url, curve=pki.curve("mallory"))
    plain = RawClient(secured.url)
    wrong_broker_key = RawClient(secured.url, curve=pki.curve("alice", broker="broker-a"))
    try:
        assert _silent(stranger), "an unknown key got an answer"
        assert _silent(plain), "a client without CURVE got an answer"
        assert _silent(wrong_broker_key), "a client holding the wrong broker key got an answer"
    finally:
        stranger.close(), plain.close(), wrong_broker_key.close()
    # the Python client says why instead of timing out
    with pytest.raises(BrokerError) as e:
        with Producer(secured.url, acks=1, connect_timeout_ms=5000, **pki.client("mallory")) as p:
            p.send_batch("logs", [b"x"], partition=0).result()
    assert e.value.code == ErrorCode.NOT_AUTHORIZED and "refused the connection" in e.value.message
    assert _stats(secured, pki)["messages"] == before, "a message from an unknown key was accepted"
    assert "refused a CURVE connection on hpbroker.client from 127.0.0.1: unknown key" in secured.log()


def test_a_known_key_without_the_right_acl_gets_not_authorized(secured, pki):
    before = _stats(secured, pki)["messages"]
    bob = RawClient(secured.url, timeout_ms=5000, curve=pki.curve("bob"))  # known, granted nothing
    alice = RawClient(secured.url, timeout_ms=5000, curve=pki.curve("alice"))  # produce/consume on logs*
    try:
        refused = {
            "bob produce": bob.produce("logs", 0, [batch.encode_batch([b"x"])]),
            "bob fetch": bob.call(m.Fetch(id=bob.next_id(), topic="logs", partition=0, offset=0))[0],
            "bob metadata of logs": bob.call(m.Metadata(id=bob.next_id(), topics=["logs"]))[0],
            "bob list offsets": bob.call(m.ListOffsets(id=bob.next_id(), topic="logs", partition=0, spec=-1))[0],
            "alice produce elsewhere": alice.produce("audit", 0, [batch.encode_batch([b"x"])]),
            "alice create topic": alice.call(m.CreateTopic(id=alice.next_id(), topic="logs.new", partitions=1))[0],
            "alice stats": alice.call(m.Stats(id=alice.next_id()))[0],
            "alice promote": alice.call(m.Promote(id=alice.next_id()))[0],
            "alice offset reset": alice.call(m.OffsetCommit(id=alice.next_id(), group="g",
                                                            offsets=[m.OffsetEntry("logs", 0, 0)]))[0],
        }
        assert {k: r.code for k, r in refused.items()} == {k: ErrorCode.NOT_AUTHORIZED for k in refused}
        assert "principal bob is not granted produce on topic logs" in refused["bob produce"].message
        # acks=0: no reply, and nothing written either
        bob.send_frames(codec.encode_request(m.Produce(id=bob.next_id(), topic="logs", partition=0, acks=0),
                                             [batch.encode_batch([b"fire and forget"])]))
        # a known key still learns the cluster's shape
        assert bob.call(m.Metadata(id=bob.next_id(), topics=[]))[0].code == 0
    finally:
        bob.close(), alice.close()
    assert _stats(secured, pki)["messages"] == before
    log = secured.log()
    assert "NOT_AUTHORIZED: principal bob may not produce on topic logs (Produce)" in log
    assert "NOT_AUTHORIZED: principal alice may not admin on the cluster (Stats)" in log


def test_with_the_right_acl_it_works(secured, pki, tmp_path):
    with Producer(secured.url, acks=1, connect_timeout_ms=10_000, **pki.client("alice")) as p:
        futures = [p.send("logs.app", b"line %d" % i, partition=i % 2) for i in range(100)]
        p.flush()
    assert all(f.get(10).offset >= 0 for f in futures)
    c = Consumer(secured.url, "logs.app", auto_offset_reset="earliest", group_id="readers", **pki.client("alice"))
    try:
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 100 and time.monotonic() < deadline:
            got += [msg.value for msg in c.poll(timeout_ms=500)]
        c.commit()
    finally:
        c.close()
    assert sorted(got) == sorted(b"line %d" % i for i in range(100))
    with Admin(secured.url, **pki.client("ops")) as adm:
        adm.create_topic("audit", 1)
        assert "audit" in adm.list_topics()
    # the command line takes the same keys
    env = dict(os.environ, HPBROKER_URL=secured.url)
    flags = ["--curve-secret-key-file", pki.secret("alice"), "--broker-public-key", pki.public("broker")]
    r = subprocess.run([sys.executable, "-m", "hpbroker", "produce", "logs.cli", *flags], input="one\ntwo\n",
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "hpbroker", "consume", "logs.cli", "--from-beginning", "--max-messages",
                        "2", *flags], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["one", "two"], r.stderr
    r = subprocess.run([sys.executable, "-m", "hpbroker", "stats", *flags], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "NOT_AUTHORIZED" in r.stderr


def test_replication_over_curve_on_both_sides(pki, tmp_path):
    """Master a and slave b, each with its own key; b authenticates to a as
    broker-b (granted replicate), catches up what a took before it came,
    then follows live; acks=all is acknowledged, so b's reports came in.
    Alice's key is one a knows, but not granted replicate: refused there."""
    common = "[replication]\nreplica_lag_max_ms = 1500\nack_interval_ms = 50\n[ring]\ndead_after_ms = 60000\n"
    a = _start(pki, tmp_path, "a", "broker-a", ["alice", "ops", "broker-b"], common,
               "--role", "master", "--broker-id", "1")
    b = None
    try:
        with Producer(a.url, acks=1, **pki.client("alice", "broker-a")) as p:
            p.send_batch("logs", [b"early %d" % i for i in range(50)], partition=0).result(10)
        slave_of_a = f'master_public_key = "{pki.public("broker-a")}"\n' + common
        b = _start(pki, tmp_path, "b", "broker-b", ["alice", "ops", "broker-a"], slave_of_a,
                   "--role", "slave", "--master", a.url, "--broker-id", "2")
        _until(lambda: _stats(a, pki, "broker-a").get("slave_2_insync") == 1, "the slave to be in sync", a, b)
        with Producer(a.url, acks="all", **pki.client("alice", "broker-a")) as p:
            p.send_batch("logs", [b"late %d" % i for i in range(50)], partition=0).result(10)
        cons = Consumer(b.url, "logs", partitions=[0], auto_offset_reset="earliest", **pki.client("alice", "broker-b"))
        try:
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 100 and time.monotonic() < deadline:
                got += [msg.value for msg in cons.poll(timeout_ms=500)]
        finally:
            cons.close()
        assert got == [b"early %d" % i for i in range(50)] + [b"late %d" % i for i in range(50)]
        # a known key without replicate gets nothing from a's replication sockets
        md = RawClient(a.url, timeout_ms=5000, curve=pki.curve("alice", "broker-a"))
        fetch_ep, _ack_ep, pub_ep = md.call(m.Metadata(id=md.next_id(), topics=[]))[0].replication[:3]
        md.close()
        intruder = RawClient(fetch_ep, curve=pki.curve("alice", "broker-a"))
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.linger = 0
        sub.curve_publickey, sub.curve_secretkey, sub.curve_serverkey = pki.curve("alice", "broker-a")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub_ep)
        try:
            intruder.send_frames([rm.encoder.encode(rm.Hello(cluster_id="hpbroker", slave_id=9, max_epoch=0))])
            with Producer(a.url, acks="all", **pki.client("alice", "broker-a")) as p:
                p.send_batch("logs", [b"late %d" % i for i in range(50, 60)], partition=0).result(10)
            with pytest.raises(TimeoutError):
                intruder.recv(timeout_ms=1000)
            assert not sub.poll(500), "a key without replicate got the master's batches"
        finally:
            intruder.close(), sub.close()
        assert "principal alice is not granted replicate" in a.log()
        assert "slave 9" not in a.log()
        # the master goes; an operator (admin) promotes b over CURVE, and b's writers publish over CURVE
        a.stop()
        r = subprocess.run([sys.executable, "-m", "hpbroker", "promote", "--broker", b.url, "--curve-secret-key-file",
                            pki.secret("ops"), "--broker-public-key", pki.public("broker-b")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        with Producer(b.url, acks=1, **pki.client("alice", "broker-b")) as p:
            assert p.send_batch("logs", [b"after"], partition=0).result(10).offset == 110
        ops = RawClient(b.url, timeout_ms=5000, curve=pki.curve("ops", "broker-b"))
        md = ops.call(m.Metadata(id=ops.next_id(), topics=[]))[0]
        ops.close()
        assert md.role == "master" and md.replication and all(md.replication), md  # its writers' PUB sockets
    finally:
        for x in (b, a):
            if x is not None:
                x.stop()


def _start(pki: Pki, tmp_path: Path, name: str, key: str, trusted, extra: str, *args: str) -> BrokerProcess:
    """A CURVE broker with ``key``'s key pair, trusting ``trusted``, data in tmp_path/name."""
    b = BrokerProcess(tmp_path / name, args=("--config", pki.config(tmp_path / f"etc-{name}", key, trusted, extra),
                                             "--partitions", "2", *args))
    b.wait_ready = lambda timeout: _wait_ready(b, pki, timeout, broker_key=key)
    return b.start()


def _until(pred, what, *brokers, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(b.log()[-3000:] for b in brokers))


def test_a_broker_with_an_unreadable_key_does_not_start(pki, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[security]\ncurve = true\nserver_secret_key_file = "{pki.public("broker")}"\n'
                   f'authorized_keys_dir = "{pki.keys}"\nacl_file = "{tmp_path / "none.toml"}"\n')
    r = subprocess.run([sys.executable, "-m", "hpbroker", "serve", "--config", str(cfg), "--port", "1",
                        "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no secret key" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


def test_local_files_are_owner_only(tmp_path, pki):
    """Started with umask 000, the broker still creates every file 0600 and
    every directory 0700: data, indexes, checkpoints, its run directory and
    shared memory.  (Its ipc:// socket files take the umask; the 0700 run
    directory is what keeps others from connecting to them.)"""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "2"))
    old = os.umask(0)
    try:
        b.start()
    finally:
        os.umask(old)
    try:
        c = RawClient(b.url, timeout_ms=10_000)
        assert c.produce("t", 0, [batch.encode_batch([b"x" * 100] * 10)]).code == 0
        assert c.call(m.OffsetCommit(id=c.next_id(), group="g", offsets=[m.OffsetEntry("t", 0, 1)]))[0].code == 0
        c.close()
        running = (_modes(tmp_path / "data") + _modes(Path(f"/tmp/hpbroker-p{b.port}")) + _shm_modes(b.port)
                   + _shm_modes_of(b.pid))
    finally:
        b.stop()
    stopped = _modes(tmp_path / "data")  # checkpoints and snapshots written at a clean stop
    # shared memory: its names are unlinked once every process has them open,
    # so the segments are found through the supervisor's fds to them
    assert any(p.endswith(".log") for p, _ in running) and any("/dev/shm/" in p for p, _ in running)
    assert [(p, oct(mode)) for p, mode in running + stopped if mode & 0o077] == []


def _modes(root: Path) -> list[tuple[str, int]]:
    out = [(str(root), stat.S_IMODE(root.stat().st_mode))]
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if not stat.S_ISSOCK(st.st_mode):
                out.append((p, stat.S_IMODE(st.st_mode)))
    return out


def _shm_modes_of(pid: int) -> list[tuple[str, int]]:
    """Modes of the shared-memory objects process ``pid`` holds open (names unlinked or not)."""
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{n}")
            if link.startswith("/dev/shm/"):
                out.append((link, stat.S_IMODE(os.stat(f"/proc/{pid}/fd/{n}").st_mode)))
        except OSError:
            continue
    return out


def _shm_modes(port: int) -> list[tuple[str, int]]:
    names = [n for n in os.listdir("/dev/shm") if n.removeprefix("sem.").startswith(f"hpb.p{port}.")]
    return [(f"/dev/shm/{n}", stat.S_IMODE(os.stat(f"/dev/shm/{n}").st_mode)) for n in names]
