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
from zkreg import Registrar, expire_session

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
    for _ in range(rounds):
        for c in consumers:
            for m in c.poll(timeout_ms=100):
                got.setdefault(c, []).append(m)


def settled(consumers, n):
    """Every consumer's assignment, once they are disjoint and cover all n global partitions."""
    parts = [sorted(tp.partition for tp in c.assignment()) for c in consumers]
    flat = [p for ps in parts for p in ps]
    return parts if sorted(flat) == list(range(n)) else None


def test_a_group_of_two_splits_the_global_partitions_and_one_takes_all_when_the_other_leaves(cluster):
    cluster.add_set(1)
    cluster.add_set(2)
    t, g = cluster.topic, "g" + uuid.uuid4().hex[:6]
    kw = dict(group_id=g, auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=4000)
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
        # one leaves: the other owns everything, and goes on from the committed offsets
        c1.close()
        wait_for(lambda: (poll_all([c2], got), len(c2.assignment()) == 8)[1], what="the survivor to take all 8")
        assert set(owners(cluster, g, t).values()) == {c2.member_id}
        got.clear()
        produce(cluster.url, t, 16, prefix="late")
        wait_for(lambda: (poll_all([c2], got), len(got.get(c2, [])) >= 16)[1], what="16 more messages")
        assert sorted(m.value for m in got[c2]) == sorted(f"late{i}".encode() for i in range(16))
    finally:
        c1.close()
        c2.close()
