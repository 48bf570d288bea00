"""Clients of a cluster found in ZooKeeper (issue 22, the client side):
zk:// URLs, routing over the global partition list, consumer groups whose
members and owners are ZooKeeper nodes, offsets at MetaQ's path.

Real ZooKeeper (tests/servers.py), real standalone brokers on 127.0.0.1.
Until the brokers register themselves (``serve --zookeeper``), each test's
:class:`zkreg.Registrar` writes the nodes a broker will write, under a
chroot of the test's own, so tests sharing the ZooKeeper server never see
each other's clusters.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from brokerproc import BrokerProcess
from hpbroker import Admin, Consumer, Producer
from hpbroker.client.partitioner import partition_for_key
from hpbroker.cluster import paths
from servers import own_zookeeper
from zkreg import Registrar, expire_session


@pytest.fixture(scope="module")
def zookeeper_server():
    """This module's own ZooKeeper (servers.own_zookeeper): a group of its own under xdist."""
    yield from own_zookeeper()


PARTS = 4  # per replica set


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    """Three standalone brokers; each test registers the ones it wants as replica sets 1, 2, 3."""
    out = []
    try:
        for i in range(3):
            d = tmp_path_factory.mktemp(f"b{i}")
            out.append(BrokerProcess(d / "data", args=("--partitions", "1")).start())
        yield out
    finally:
        for b in out:
            b.stop()


class Cluster:
    def __init__(self, zk_server, brokers):
        self.zk_server = zk_server
        self.brokers = brokers
        self.chroot = f"hpb-{uuid.uuid4().hex[:8]}"
        self.reg = Registrar(zk_server, self.chroot)
        self.url = f"zk://{zk_server.hosts}/{self.chroot}"
        self.topic = f"t{uuid.uuid4().hex[:6]}"

    def add_set(self, rs: int, topic: str | None = None, partitions: int = PARTS) -> None:
        """Broker rs-1 becomes replica set rs's master holding ``partitions`` of the topic."""
        b = self.brokers[rs - 1]
        topic = topic or self.topic
        with Admin(b.url) as a:
            a.create_topic(topic, partitions, if_not_exists=True)
        self.reg.register_master(rs, b.url)
        self.reg.register_topic(topic, rs, partitions)

    def close(self):
        self.reg.close()


@pytest.fixture
def cluster(zookeeper_server, brokers):
    c = Cluster(zookeeper_server, brokers)
    try:
        yield c
    finally:
        c.close()


def wait_for(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_all(url_or_broker, topic, expect, **kw):
    """Every message of ``topic`` until ``expect`` have come."""
    out = []
    with Consumer(url_or_broker, topic, auto_offset_reset="earliest", **kw) as c:
        deadline = time.monotonic() + 30
        while len(out) < expect and time.monotonic() < deadline:
            out += c.poll(timeout_ms=500)
    return out


def test_zk_url_parsing():
    from hpbroker.cluster.client_view import parse_zk_url

    assert parse_zk_url("zk://127.0.0.1:2181") == "127.0.0.1:2181"
    assert parse_zk_url("zk://a:1,b:2/x/y/") == "a:1,b:2/x/y"
    for bad in ("zk://", "zk://a/x", "tcp://a:1", "zk://a:b"):
        with pytest.raises(ValueError):
            parse_zk_url(bad)


def test_range_assignment_is_metaqs_default_strategy():
    from hpbroker.cluster.client_group import range_assign

    parts = [(1, p) for p in range(4)] + [(2, p) for p in range(4)]
    members = ["c", "a", "b"]  # sorted by id: a, b, c; 8 = 3 + 3 + 2
    assert range_assign(parts, members, "a") == parts[0:3]
    assert range_assign(parts, members, "b") == parts[3:6]
    assert range_assign(parts, members, "c") == parts[6:8]
    assert range_assign(parts[:2], members, "c") == []  # more members than partitions: the last get none
    assert range_assign(parts, members, "z") == []


def test_the_global_list_is_sorted_by_set_and_create_spreads_evenly():
    from hpbroker.client.cluster_admin import split
    from hpbroker.cluster.client_view import Snapshot, global_partitions

    snap = Snapshot(1, {}, {"t": {2: 2, 1: 3}})
    assert snap.partitions("t") == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)] == global_partitions({1: 3, 2: 2})
    assert split(8, [1, 2]) == {1: 4, 2: 4} and split(5, [3, 1]) == {3: 3, 1: 2}
    with pytest.raises(ValueError):
        split(1, [1, 2])


def test_a_set_counts_with_its_masters_registration_or_while_it_has_none_its_slaves(cluster):
    from hpbroker.cluster.client_view import ClusterView

    t = cluster.topic
    cluster.reg.register_topic(t, 1, 4)
    cluster.reg._put(paths.topic_slave(t, 1, 7), b"2")  # a slave lagging on a topic change: the master's count wins
    cluster.reg._put(paths.topic_slave(t, 2, 8), b"3")  # set 2 has no master (a failover in progress)
    view = ClusterView(cluster.url).start()
    try:
        assert view.watch_topic(t) == [(1, p) for p in range(4)] + [(2, p) for p in range(3)]
        cluster.reg._put(paths.topic_master(t, 2), b"3")
        cluster.reg.zk.delete(paths.topic_slave(t, 2, 8))  # promoted: its node is a master's now
        cluster.reg._put(paths.topic_slave(t, 3, 9), b"0")  # a count of 0 is no partition
        view.refresh_now()
        assert view.partitions(t) == [(1, p) for p in range(4)] + [(2, p) for p in range(3)]
    finally:
        view.close()


def test_keyed_messages_go_to_their_global_partition_and_keyless_round_robin(cluster):
    cluster.add_set(1)
    cluster.add_set(2)
    t = cluster.topic
    with Producer(cluster.url, acks=1) as p:
        assert p.partitions(t) == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
        keys = [f"k{i}".encode() for i in range(40)]
        keyed = {k: p.send(t, b"v-" + k, key=k) for k in keys}
        keyless = [p.send(t, f"n{i}".encode()) for i in range(16)]
        p.flush(30)
        for k, f in keyed.items():
            md = f.get(10)
            assert md.partition == partition_for_key(k, 8)
        assert Counter(f.get(10).partition for f in keyless) == {g: 2 for g in range(8)}
        again = {k: p.send(t, b"again", key=k).get(10).partition for k in keys}
        assert again == {k: partition_for_key(k, 8) for k in keys}
    # where the messages really are: on each set's broker, in the local partition the global one names
    layout = [(rs, q) for rs in (1, 2) for q in range(PARTS)]
    for rs in (1, 2):
        expect = 8 + 2 * sum(1 for k in keys if layout[partition_for_key(k, 8)][0] == rs)
        msgs = read_all(cluster.brokers[rs - 1].url, t, expect)
        assert len(msgs) == expect
        for m in msgs:
            if m.key is not None:
                assert layout[partition_for_key(m.key, 8)] == (rs, m.partition)


def produce(url, topic, n, prefix="m"):
    with Producer(url, acks=1) as p:
        futs = [p.send(topic, f"{prefix}{i}".encode()) for i in range(n)]
        p.flush(30)
        return [f.get(10) for f in futs]


def test_a_consumer_given_a_zk_url_reads_every_set(cluster):
    cluster.add_set(1)
    cluster.add_set(2)
    mds = produce(cluster.url, cluster.topic, 40)
    msgs = read_all(cluster.url, cluster.topic, 40)
    assert sorted(m.value for m in msgs) == sorted(f"m{i}".encode() for i in range(40))
    # each message reports the global partition and offset its producer was told
    assert sorted((m.partition, m.offset) for m in msgs) == sorted((md.partition, md.offset) for md in mds)
    assert {m.partition for m in msgs} == set(range(8))


def owners(cluster, group, topic) -> dict[str, str]:
    """{"<set>-<p>": member id} as the owner nodes say."""
    zk = cluster.reg.zk
    base = f"{paths.CONSUMERS}/{group}/owners/{topic}"
    if zk.exists(base) is None:
        return {}
    return {name: zk.get(f"{base}/{name}")[0].decode() for name in zk.get_children(base)}


def poll_all(consumers, got: dict, rounds=1):
    """A poll of each; after each, no partition is in two consumers' assignments (every rebalance step
    of every group test passes here)."""
    for _ in range(rounds):
        for c in consumers:
            for m in c.poll(timeout_ms=100):
                got.setdefault(c, []).append(m)
            held = [tp for c2 in consumers if not c2._closed for tp in c2.assignment()]
            assert len(held) == len(set(held)), f"a partition assigned twice: {sorted(held)}"


def settled(consumers, n):
    """Every consumer's assignment, once they are disjoint, cover all n global partitions and are
    balanced (a member that joined last may otherwise still have nothing while the first holds all)."""
    parts = [sorted(tp.partition for tp in c.assignment()) for c in consumers]
    flat = [p for ps in parts for p in ps]
    sizes = [len(ps) for ps in parts]
    return parts if sorted(flat) == list(range(n)) and max(sizes) - min(sizes) <= 1 else None


def test_a_group_of_two_splits_the_global_partitions_and_one_takes_all_when_the_other_leaves(cluster):
    cluster.add_set(1)
    cluster.add_set(2)
    t, g = cluster.topic, "g" + uuid.uuid4().hex[:6]
    kw = dict(group_id=g, auto_offset_reset="earliest", enable_auto_commit=False)
    c1 = Consumer(cluster.url, t, **kw)
    c2 = Consumer(cluster.url, t, **kw)
    got: dict = {}
    try:
        parts = wait_for(lambda: (poll_all([c1, c2], got), settled([c1, c2], 8))[1], what="a split of 8 partitions")
        # MetaQ's range assignment over the members sorted by id: the first takes 0-3, the second 4-7
        first, second = sorted([c1, c2], key=lambda c: c.member_id)
        assert sorted(tp.partition for tp in first.assignment()) == [0, 1, 2, 3]
        assert sorted(tp.partition for tp in second.assignment()) == [4, 5, 6, 7]
        assert parts
        # the owner nodes: one per partition, MetaQ's <set>-<p> names, each naming its member
        own = owners(cluster, g, t)
        assert own == {**{f"1-{p}": first.member_id for p in range(4)}, **{f"2-{p}": second.member_id for p in range(4)}}
        produce(cluster.url, t, 80)
        wait_for(lambda: (poll_all([c1, c2], got), sum(map(len, got.values())) >= 80)[1], what="80 messages")
        seen = [(m.partition, m.offset) for ms in got.values() for m in ms]
        assert len(seen) == len(set(seen)) == 80  # nobody read a partition the other read
        for c, ms in got.items():
            assert {m.partition for m in ms} <= {tp.partition for tp in c.assignment()}
        c1.commit()
        c2.commit()
        # the offsets, at MetaQ's path with MetaQ's data: /meta/consumers/<g>/offsets/<topic>/<set>-<p>, "<msgId>-<offset>"
        counts = Counter(m.partition for ms in got.values() for m in ms)
        layout = c1.partitions(t)
        for gp, n in counts.items():
            rs, p = layout[gp]
            data, _ = cluster.reg.zk.get(paths.group_offset(g, t, rs, p))
            assert data == f"-1-{n}".encode()
        # the console reads the group from ZooKeeper: members, owners, committed offsets, lag
        r = hpbroker("groups", "list", "--broker", cluster.url)
        assert f"{g}\tstable\t2" in r.stdout.splitlines(), r.stdout + r.stderr
        r = hpbroker("groups", "describe", g, "--broker", cluster.url)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"group {g}: stable") and "2 members, lag 0" in lines[0]
        assert f"{first.member_id}\t" in r.stdout and f"\t{t}:0,1,2,3" in r.stdout and f"\t{t}:4,5,6,7" in r.stdout
        rows = [line.split("\t") for line in lines if line.startswith(f"{t}\t")]
        assert [(int(x[1]), int(x[2]), x[5]) for x in rows] == [
            (gp, counts[gp], first.member_id if gp < 4 else second.member_id) for gp in range(8)]
        # one leaves: the other owns everything, and goes on from the committed offsets
        c1.close()
        wait_for(lambda: (poll_all([c2], got), len(c2.assignment()) == 8)[1], what="the survivor to take all 8")
        assert set(owners(cluster, g, t).values()) == {c2.member_id}
        got.clear()
        produce(cluster.url, t, 16, prefix="late")
        wait_for(lambda: (poll_all([c2], got), len(got.get(c2, [])) >= 16)[1], what="16 more messages")
        assert sorted(m.value for m in got[c2]) == sorted(f"late{i}".encode() for i in range(16))
        r = hpbroker("groups", "reset-offsets", g, "--to-earliest", "--broker", cluster.url)
        assert r.returncode == 1 and "live member" in r.stderr  # c2 still owns its partitions
        c2.commit()
        c2.close()
        r = hpbroker("groups", "reset-offsets", g, "--to-earliest", "--broker", cluster.url)
        assert r.returncode == 0, r.stderr
        assert cluster.reg.zk.get(paths.group_offset(g, t, 2, 3))[0] == b"-1-0"  # MetaQ's node, rewound
    finally:
        c1.close()
        c2.close()


class Worker:
    """tests/group_worker.py given a zk:// URL: a member in its own process, so a SIGSTOP pauses its ZooKeeper session."""

    def __init__(self, url, topic, group, out, *args):
        import json
        import os
        import subprocess
        import sys
        import threading
        from pathlib import Path

        here = Path(__file__).resolve().parent
        self.events: list[dict] = []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]))
        self.proc = subprocess.Popen([sys.executable, str(here / "group_worker.py"), url, topic, group, str(out), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, text=True)
        self.lines: list[str] = []

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("{"):
                    self.events.append(json.loads(line))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def owned(self) -> set[int]:
        own: set[int] = set()
        for e in list(self.events):
            if e["event"] == "assigned":
                own |= {p for p, _ in e["partitions"]}
            elif e["event"] in ("revoked", "lost"):
                own -= set(e["partitions"])
        return own

    def stop(self):
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)


def test_a_member_whose_session_expires_drops_its_partitions_and_the_other_takes_them(cluster, tmp_path):
    import os
    import signal

    cluster.add_set(1)
    cluster.add_set(2)
    t, g = cluster.topic, "g" + uuid.uuid4().hex[:6]
    # a 5 s session: short enough for a test, long enough that a loaded machine does not expire a live one
    w = Worker(cluster.url, t, g, tmp_path / "w.txt", "--session-ms", "5000", "--commit-ms", "200")
    c = Consumer(cluster.url, t, group_id=g, auto_offset_reset="earliest",
                 auto_commit_interval_ms=200)
    got: dict = {}
    try:
        wait_for(lambda: (poll_all([c], got), len(w.owned()) == 4 and len(c.assignment()) == 4)[1],
                 what="a 4/4 split", timeout=60)
        assert w.owned().isdisjoint({tp.partition for tp in c.assignment()})
        theirs = set(w.owned())
        seen = len(w.events)
        os.kill(w.proc.pid, signal.SIGSTOP)  # its session expires on the server in 5 s
        wait_for(lambda: (poll_all([c], got), len(c.assignment()) == 8)[1], what="the other to take all 8", timeout=60)
        assert set(owners(cluster, g, t).values()) == {c.member_id}
        got.clear()
        produce(cluster.url, t, 24, prefix="while-stopped")
        wait_for(lambda: (poll_all([c], got), len(got.get(c, [])) >= 24)[1], what="24 messages")
        os.kill(w.proc.pid, signal.SIGCONT)
        # it learns its session expired: it gives up what it had (a "lost": no commit), joins again, 4/4 once more
        wait_for(lambda: any(e["event"] == "lost" for e in w.events[seen:]), what="the lost event", timeout=60)
        assert set(next(e for e in w.events[seen:] if e["event"] == "lost")["partitions"]) == theirs
        samples = []

        def split_again():
            poll_all([c], got)
            mine = {tp.partition for tp in c.assignment()}
            samples.append((set(w.owned()), mine))
            return len(mine) == 4 and len(w.owned()) == 4

        wait_for(split_again, what="a 4/4 split again", timeout=60)
        # the worker reports an assignment after it started fetching, so at every sample nobody fetched
        # a partition the other held: no partition was ever read by both
        assert all(a.isdisjoint(b) for a, b in samples)
    finally:
        c.close()
        w.stop()
    assert not w.proc.returncode, "".join(w.lines[-30:])


def test_a_running_producer_and_consumer_start_using_a_new_set_without_a_restart(cluster):
    cluster.add_set(1)
    cluster.add_set(2)
    t = cluster.topic
    with Producer(cluster.url, acks=1) as p, Consumer(cluster.url, t, auto_offset_reset="earliest") as c:
        assert len(p.partitions(t)) == 8
        first = [p.send(t, f"a{i}".encode()).get(10) for i in range(16)]
        assert {md.partition for md in first} == set(range(8))
        cluster.add_set(3)  # the topic spreads over a third set while both run
        wait_for(lambda: len(p.partitions(t)) == 12, what="the producer to see set 3")
        later = [p.send(t, f"b{i}".encode()).get(10) for i in range(24)]
        assert {md.partition for md in later} == set(range(12))  # round robin now covers set 3's 8..11 too
        got = []
        wait_for(lambda: (got.extend(c.poll(timeout_ms=200)), len(got) >= 40)[1], what="40 messages")
        assert sorted(m.value for m in got) == sorted([f"a{i}".encode() for i in range(16)]
                                                      + [f"b{i}".encode() for i in range(24)])
        assert {m.partition for m in got} == set(range(12))
    # set 3's broker really holds them: 2 per partition, in its local partitions 0..3
    assert Counter(m.partition for m in read_all(cluster.brokers[2].url, t, 8)) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_clients_follow_a_sets_new_master_registered_in_zookeeper(cluster):
    """Set 1's master moves from broker 1 to broker 3 (a failover, seen from the clients: the master
    node names another broker); the running producer and consumer use the new one."""
    cluster.add_set(1)
    cluster.add_set(2)
    t = cluster.topic
    with Admin(cluster.brokers[2].url) as a:
        a.create_topic(t, PARTS)
    with Producer(cluster.url, acks=1) as p, Consumer(cluster.url, t, auto_offset_reset="earliest") as c:
        before = [p.send(t, f"a{i}".encode(), partition=0).get(10) for i in range(3)]
        got = []
        wait_for(lambda: (got.extend(c.poll(timeout_ms=200)), len(got) >= 3)[1], what="3 messages")
        cluster.reg.unregister_master(1)
        cluster.reg.register_master(1, cluster.brokers[2].url, broker_id=3, epoch=1)

        def moved():
            md = p.send(t, b"after", partition=0).get(10)
            return md if md.offset == 0 else None  # broker 3's partition 0 was empty

        assert wait_for(moved, what="the producer to use broker 3").partition == 0
        assert [md.offset for md in before] == [0, 1, 2]
        p.send(t, b"on-3", partition=0).get(10)  # only broker 3 has this one
        wait_for(lambda: any(m.value == b"on-3" for m in (got.extend(c.poll(timeout_ms=200)) or got)),
                 what="the consumer to read from broker 3")
    on_3 = read_all(cluster.brokers[2].url, t, 2)
    assert {b"after", b"on-3"} <= {m.value for m in on_3}


def hpbroker(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "hpbroker", *args], capture_output=True, text=True, timeout=120)


def test_topics_create_and_describe_with_zookeeper(cluster):
    cluster.reg.register_master(1, cluster.brokers[0].url)
    cluster.reg.register_master(2, cluster.brokers[1].url)
    cluster.reg.register_slave(2, 7, cluster.brokers[2].url)  # a slave's registration: a replica in describe
    zk = cluster.url.removeprefix("zk://")
    t = cluster.topic
    r = hpbroker("topics", "create", t, "--partitions", "6", "--brokers", "1,2", "--zookeeper", zk)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{t}: 6 partitions (set 1: 3, set 2: 3)"
    for rs, b in ((1, cluster.brokers[0]), (2, cluster.brokers[1])):
        with Admin(b.url) as a:
            assert len(a.topic(t).partitions) == 3  # on each set's master
        cluster.reg.register_topic(t, rs, 3)  # what the broker registers itself once issue 22's broker side lands
    produce(cluster.url, t, 6)  # one in each global partition
    r = hpbroker("topics", "describe", t, "--zookeeper", zk)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == f"topic {t}: 6 partitions"
    rows = [line.split("\t") for line in lines[2:]]
    assert rows == [[str(g), str(rs), f"{rs}-{p}", str(rs), "1" if rs == 1 else "2,7", "0", "1"]
                    for g, (rs, p) in enumerate([(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)])]
    r = hpbroker("topics", "list", "--zookeeper", zk)
    assert f"{t}\t6" in r.stdout.splitlines()
    # a set with no master: one line on stderr, exit 1
    r = hpbroker("topics", "create", t + "x", "--partitions", "2", "--brokers", "1,9", "--zookeeper", zk)
    assert r.returncode == 1 and "replica set(s) 9 have no master" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_producer_whose_zookeeper_session_expired_watches_again(cluster):
    """Watches go with an expired session: the view reads the tree again under the new one."""
    cluster.add_set(1)
    t = cluster.topic
    with Producer(cluster.url, acks=1) as p:
        assert len(p.partitions(t)) == 4
        old = p._view.zk.client_id[0]
        expire_session(cluster.zk_server, p._view.zk)
        wait_for(lambda: p._view.zk.connected and p._view.zk.client_id[0] != old, what="a new session")
        cluster.add_set(2)
        wait_for(lambda: len(p.partitions(t)) == 8, what="the producer to see set 2 after its session expired")
        assert {p.send(t, b"x").get(10).partition for _ in range(8)} == set(range(8))


def test_a_consumer_reads_the_sets_it_can_reach_while_one_is_down(cluster):
    from brokerproc import free_port

    cluster.add_set(1)
    cluster.reg.register_master(2, f"tcp://127.0.0.1:{free_port()}")  # registered, but nobody listens there
    cluster.reg.register_topic(cluster.topic, 2, PARTS)
    with Producer(cluster.brokers[0].url, acks=1) as p:
        for i in range(8):
            p.send(cluster.topic, f"m{i}".encode(), partition=i % PARTS).get(10)
    msgs = read_all(cluster.url, cluster.topic, 8, connect_timeout_ms=500)
    assert sorted(m.value for m in msgs) == sorted(f"m{i}".encode() for i in range(8))
    assert {m.partition for m in msgs} == {0, 1, 2, 3}  # set 1's: global 0..3


def test_clients_follow_a_promotion_within_a_set(cluster, tmp_path):
    """Set 1 is a real master-slave pair; its master is killed and its slave promoted (by hand, until
    the brokers fail over by themselves): the zk:// producer and group consumer go on by themselves,
    the consumer from where it was on the new master."""
    from test_replication import master, promote, slave, stats

    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    p = c = None
    t, g = cluster.topic, "g" + uuid.uuid4().hex[:6]
    try:
        wait_for(lambda: stats(a).get("slave_2_insync") == 1, what="the slave to be in sync")
        with Admin(a.url) as adm:
            adm.create_topic(t, PARTS)
        cluster.reg.register_master(1, a.url, broker_id=1, epoch=1)
        cluster.reg.register_slave(1, 2, b.url, epoch=1)
        cluster.reg.register_topic(t, 1, PARTS)
        cluster.add_set(2)
        opts = dict(request_timeout_ms=1500, connect_timeout_ms=1500)
        p = Producer(cluster.url, acks=1, retries=30, retry_backoff_ms=200, **opts)
        c = Consumer(cluster.url, t, group_id=g, auto_offset_reset="earliest", enable_auto_commit=False,
                     fetch_max_wait_ms=200, **opts)
        before = [p.send(t, f"before-{i}".encode()) for i in range(40)]
        p.flush(30)
        assert {f.get(0).partition for f in before} == set(range(8))
        got = []
        wait_for(lambda: (got.extend(c.poll(200)), len(got) >= 40)[1], what="40 messages")
        c.commit()
        a.kill()
        cluster.reg.unregister_master(1)  # what a's expiring session does to its node
        after = [p.send(t, f"after-{i}".encode()) for i in range(40)]  # set 1's wait for a leader
        time.sleep(1.0)
        epoch = promote(b)
        cluster.reg.register_master(1, b.url, broker_id=2, epoch=epoch)
        cluster.reg.zk.delete(paths.slave(1, 2))
        assert {f.get(60).partition for f in after} == set(range(8))
        got.clear()
        wait_for(lambda: (got.extend(c.poll(200)), len(got) >= 40)[1], what="40 more messages", timeout=60)
        assert sorted(m.value for m in got) == sorted(f"after-{i}".encode() for i in range(40))
        # its offsets are in ZooKeeper, not on the dead master: what it committed before the kill is there
        assert c.committed(0) == sum(1 for f in before if f.get(0).partition == 0)
    finally:
        if p is not None:
            p.close(10)
        if c is not None:
            c.close()
        b.stop()
        a.stop()


def test_zk_clients_over_brokers_that_register_themselves_and_fail_over(tmp_path, zookeeper_server):
    """Once issue 22's broker side is merged (``serve --zookeeper``): no registrar, the brokers write
    their own nodes; a master is killed with -9 and its slave promotes itself under a keyed acks=all
    producer and a group consumer.  Skipped on a tree without the broker side."""
    pytest.importorskip("hpbroker.cluster.broker_agent")
    from test_cluster_broker import broker, chroot, node, stop_all, zk_client
    from test_replication import wait_until

    hosts = chroot(zookeeper_server)
    url = "zk://" + hosts
    a = broker(tmp_path, "a", hosts, "master", 1, rs=1)
    b = broker(tmp_path, "b", hosts, "slave", 2, rs=1)
    m3 = broker(tmp_path, "c", hosts, "master", 3, rs=3)
    p = c = z = None
    try:
        z = zk_client(hosts)
        wait_until(lambda: node(z, paths.master(3)) is not None and (node(z, paths.master(1)) or 0)
                   and node(z, paths.master(1)).insync == [2], 30, "both masters, set 1's slave in sync")
        r = hpbroker("topics", "create", "T", "--partitions", "8", "--brokers", "1,3", "--zookeeper", hosts)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: z.exists(paths.topic_master("T", 1)) and z.exists(paths.topic_master("T", 3)), 30,
                   "the masters to register the topic")
        r = hpbroker("topics", "describe", "T", "--zookeeper", hosts)
        assert r.stdout.splitlines()[2].split("\t")[:5] == ["0", "1", "1-0", "1", "1,2"]
        opts = dict(request_timeout_ms=1500, connect_timeout_ms=1500)
        p = Producer(url, acks="all", retries=60, retry_backoff_ms=200, **opts)
        assert p.partitions("T") == [(1, q) for q in range(4)] + [(3, q) for q in range(4)]
        c = Consumer(url, "T", group_id="g", auto_offset_reset="earliest", fetch_max_wait_ms=200, **opts)
        keys = [f"k{i}".encode() for i in range(50)]
        futs = [p.send("T", b"before", key=k) for k in keys]
        p.flush(30)
        assert [f.get(0).partition for f in futs] == [partition_for_key(k, 8) for k in keys]
        got = []
        wait_for(lambda: (got.extend(c.poll(200)), len(got) >= 50)[1], what="50 messages")
        c.commit()
        a.kill()
        futs = [p.send("T", b"after", key=k) for k in keys]
        assert [f.get(60).partition for f in futs] == [partition_for_key(k, 8) for k in keys]  # same keys, same places
        got.clear()
        wait_for(lambda: (got.extend(c.poll(200)), len(got) >= 50)[1], what="50 more", timeout=60)
        assert Counter(m.value for m in got) == {b"after": 50}  # from where it was, on the promoted slave
        assert node(z, paths.master(1)).broker_id == 2
    finally:
        if p is not None:
            p.close(10)
        if c is not None:
            c.close()
        if z is not None:
            z.stop()
            z.close()
        stop_all(a, b, m3)


def test_the_console_produces_and_consumes_through_a_zk_url(cluster):
    import subprocess
    import sys

    cluster.add_set(1)
    cluster.add_set(2)
    t = cluster.topic
    r = subprocess.run([sys.executable, "-m", "hpbroker", "produce", t, "--broker", cluster.url],
                       input="".join(f"line{i}\n" for i in range(16)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = hpbroker("consume", t, "--broker", cluster.url, "--from-beginning", "--max-messages", "16",
                 "--timeout-ms", "20000", "--group", "cli")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(f"line{i}" for i in range(16))
    assert cluster.reg.zk.exists(paths.group_offset("cli", t, 2, 0))  # its offsets, in MetaQ's place
    r = hpbroker("consume", t, "--broker", "zk://nohost", "--max-messages", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "HOST:PORT" in r.stderr
    r = hpbroker("promote", "--broker", cluster.url)  # one broker's command: not a cluster's
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "produce, consume, topics" in r.stderr


def test_raw_batches_and_handler_mode_through_a_zk_url(cluster):
    import threading

    cluster.add_set(1)
    cluster.add_set(2)
    t, g = cluster.topic, "g" + uuid.uuid4().hex[:6]
    mds = produce(cluster.url, t, 32)
    with Consumer(cluster.url, t, auto_offset_reset="earliest") as c:
        assert c.beginning_offsets() == {g: 0 for g in range(8)} and c.end_offsets() == {g: 4 for g in range(8)}
        assert c.offsets_for_times({5: 0}) == {5: 0}
        raw = []
        wait_for(lambda: (raw.extend(c.poll_batches(timeout_ms=200)), sum(rb.record_count for rb in raw) >= 32)[1],
                 what="32 records in raw batches")
        assert {rb.partition for rb in raw} == {md.partition for md in mds} == set(range(8))
    handled = []
    c = Consumer(cluster.url, t, group_id=g, auto_offset_reset="earliest")

    def handler(m):
        handled.append(m)
        if len(handled) == 32:
            threading.Thread(target=c.stop).start()

    try:
        counts = c.run(handler, on_failure="drop", poll_timeout_ms=200)
    finally:
        c.close()
    assert counts["handled"] == 32
    assert sorted((m.partition, m.offset) for m in handled) == sorted((md.partition, md.offset) for md in mds)
    with Consumer(cluster.url, t, group_id=g, partitions=range(8), enable_auto_commit=False) as again:
        assert sum(again.committed(p) or 0 for p in range(8)) == 32  # committed at close
    with Consumer(cluster.url, t, partitions=[0]) as one:  # partition 7 is not assigned: asked of set 2 directly
        assert one.end_offsets([7]) == {7: 4} and one.end_offsets() == {0: 4}


def test_a_group_rebalances_when_the_topic_spreads_over_a_new_set(cluster):
    cluster.add_set(1)
    cluster.add_set(2)
    t, g = cluster.topic, "g" + uuid.uuid4().hex[:6]
    kw = dict(group_id=g, auto_offset_reset="earliest")
    c1, c2 = Consumer(cluster.url, t, **kw), Consumer(cluster.url, t, **kw)
    got: dict = {}
    try:
        wait_for(lambda: (poll_all([c1, c2], got), settled([c1, c2], 8))[1], what="a split of 8")
        cluster.add_set(3)
        parts = wait_for(lambda: (poll_all([c1, c2], got), settled([c1, c2], 12))[1], what="a split of 12")
        assert sorted(map(len, parts)) == [6, 6]
        own = owners(cluster, g, t)
        assert len(own) == 12 and {n.split("-")[0] for n in own} == {"1", "2", "3"}
        got.clear()
        mds = produce(cluster.url, t, 36)
        wait_for(lambda: (poll_all([c1, c2], got), sum(map(len, got.values())) >= 36)[1], what="36 messages")
        seen = sorted((m.partition, m.offset) for ms in got.values() for m in ms)
        assert seen == sorted((md.partition, md.offset) for md in mds)
    finally:
        c1.close()
        c2.close()


def test_a_send_waits_for_a_topic_registered_a_moment_later_and_an_unknown_one_is_an_error(cluster):
    import threading

    from hpbroker.client import BrokerError, ErrorCode

    cluster.add_set(1, topic="other")  # set 1 is there; the test's topic is not registered yet
    with Producer(cluster.url, acks=1, max_block_ms=1000) as p:
        with pytest.raises(BrokerError) as e:
            p.send(cluster.topic, b"x")
        assert e.value.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and cluster.topic in str(e.value)
    later = threading.Timer(0.5, cluster.add_set, args=(1,))
    later.start()
    try:
        with Producer(cluster.url, acks=1) as p:
            assert p.send(cluster.topic, b"x").get(10).partition in range(PARTS)
    finally:
        later.join()


def test_a_spilling_producer_keeps_a_down_sets_messages_and_sends_them_next_run(cluster, tmp_path):
    """spill_dir with a zk:// URL: one journal per replica set (<spill_dir>/set-<n>).  Set 2's broker is
    down: its share waits in set-2's journal; the next producer on the directory sends it once it is up."""
    from brokerproc import free_port

    cluster.add_set(1)
    port = free_port()
    cluster.reg.register_master(2, f"tcp://127.0.0.1:{port}")
    cluster.reg.register_topic(cluster.topic, 2, PARTS)
    t = cluster.topic
    spill = tmp_path / "spill"
    p = Producer(cluster.url, acks=1, spill_dir=spill, request_timeout_ms=1000, connect_timeout_ms=1000)
    futs = [p.send(t, f"m{i}".encode()) for i in range(16)]  # round robin: 0..3 on set 1, 4..7 on set 2
    for f in futs[:4] + futs[8:12]:
        assert f.get(30).partition in range(4)
    p.close(timeout=3)  # set 2's are still unanswered: they stay in its journal
    assert sorted(d.name for d in spill.iterdir()) == ["set-1", "set-2"]
    (tmp_path / "b2").mkdir()
    b = BrokerProcess(tmp_path / "b2" / "data", port=port, args=("--partitions", "1")).start()
    try:
        with Admin(b.url) as a:
            a.create_topic(t, PARTS)
        with Producer(cluster.url, acks=1, spill_dir=spill) as p2:
            p2.flush(60)  # waits for the journal's messages too
        msgs = read_all(b.url, t, 8)
        assert sorted(m.value for m in msgs) == sorted(f"m{i}".encode() for i in range(16) if i % 8 >= 4)
        assert Counter(m.partition for m in msgs) == {0: 2, 1: 2, 2: 2, 3: 2}
    finally:
        b.stop()


def test_a_zookeeper_outage_pauses_group_members_and_not_producers(brokers, tmp_path):
    """ZooKeeper stopped and started again (a private server, same port and data): producers go on
    with the tree they read; a group member hands out nothing while it cannot know what it owns, then
    goes on where it was with the same session - nothing lost, nothing read twice."""
    import os
    import signal

    from servers import ZooKeeperServer

    class Restartable(ZooKeeperServer):
        def halt(self) -> None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)

        def resume(self) -> None:
            self._spawn([self.java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                         "-Dzookeeper.admin.enableServer=false", "-Dzookeeper.jmx.log4j.disable=true",
                         "-cp", str(self.jar), "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                         str(self.dir / "zoo.cfg")])

    server = Restartable().start()
    cluster = Cluster(server, brokers)
    p = c = None
    try:
        cluster.add_set(1)
        cluster.add_set(2)
        t = cluster.topic
        lost = []
        p = Producer(cluster.url, acks=1)
        c = Consumer(cluster.url, t, group_id="g", auto_offset_reset="earliest", on_lost=lost.append)
        got: dict = {}
        wait_for(lambda: (poll_all([c], got), len(c.assignment()) == 8)[1], what="the member to own all 8")
        for i in range(8):
            p.send(t, f"a{i}".encode()).get(10)
        wait_for(lambda: (poll_all([c], got), len(got.get(c, [])) >= 8)[1], what="8 messages")
        server.halt()
        wait_for(lambda: (c.poll(100), c._paused)[1], what="the member to pause")
        during = [p.send(t, f"b{i}".encode()).get(10) for i in range(16)]  # acknowledged while ZooKeeper is down
        assert {md.partition for md in during} == set(range(8))
        assert c.poll(timeout_ms=1000) == []  # paused: nothing handed out
        server.resume()
        wait_for(lambda: (poll_all([c], got), len(got[c]) >= 24)[1], what="the member to go on", timeout=60)
        values = [m.value for m in got[c]]
        assert sorted(values) == sorted([f"a{i}".encode() for i in range(8)] + [f"b{i}".encode() for i in range(16)])
        assert lost == [] and len(c.assignment()) == 8  # the same session: it owned them throughout
    finally:
        if p is not None:
            p.close(10)
        if c is not None:
            c.close()
        cluster.close()
        server.stop()
