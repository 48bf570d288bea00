"""zk:// consumer groups with the ``broker`` offset store, and broadcast
through zk:// (docs/cluster.md, "Consumer groups across brokers"): a real
ZooKeeper and real brokers that register themselves (``serve --zookeeper``).

* a two-member group over two replica sets commits each set's partitions
  to that set's master; a new member resumes exactly there; ``hpbroker
  groups describe`` against each master shows them; after a kill -9 of a
  set's master, a new member resumes from the promoted slave's copy;
* a zk:// commit is refused (NON_EMPTY_GROUP) while a broker-coordinated
  group of the same name has live members on that master, whose own
  commits go on as before;
* two broadcast instances each read everything, with offsets of their own
  in the local file store;
* partitions whose committed offsets cannot be read (a set's store down)
  wait and are read again, rather than fetched from auto_offset_reset.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from hpbroker import Consumer, Producer
from hpbroker.client.stores import FileOffsetStore, OffsetStoreError
from hpbroker.cluster import paths
from hpbroker.protocol.errors import BrokerError, ErrorCode
from test_cluster_broker import broker, chroot, node, stop_all, zk_client
from test_cluster_client import hpbroker, settled, wait_for
from test_replication import wait_until
from servers import own_zookeeper


@pytest.fixture(scope="module")
def zookeeper_server():
    """This module's own ZooKeeper (servers.own_zookeeper): a group of its own under xdist."""
    yield from own_zookeeper()

T = "T"
OPTS = dict(request_timeout_ms=3000, connect_timeout_ms=3000, fetch_max_wait_ms=200)


def make_topic(z, hosts: str, t: str = T) -> None:
    r = hpbroker("topics", "create", t, "--partitions", "8", "--brokers", "1,3", "--zookeeper", hosts)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: z.exists(paths.topic_master(t, 1)) and z.exists(paths.topic_master(t, 3)), 30,
               "both masters to register the topic")


def produce(url: str, prefix: str, n: int, t: str = T) -> None:
    with Producer(url, acks="all", **{k: v for k, v in OPTS.items() if k != "fetch_max_wait_ms"}) as p:
        futs = [p.send(t, f"{prefix}{i}".encode(), key=f"k{i}".encode()) for i in range(n)]
        p.flush(30)
        for f in futs:
            f.get(10)


def drain(consumers, want: int, timeout: float = 30.0) -> list:
    """Poll every consumer until ``want`` messages came in all; then a little longer (no more may come)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for c in consumers:
            got += c.poll(timeout_ms=100)
    for _ in range(3):
        for c in consumers:
            got += c.poll(timeout_ms=100)
    return got


def described(url: str, group: str) -> dict[tuple[str, int], tuple[int, int]]:
    """``hpbroker groups describe`` against one broker: {(topic, partition): (committed, high watermark)}."""
    r = hpbroker("groups", "describe", group, "--broker", url)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert text.startswith(f"group {group}: empty,") and "0 members" in text, text  # nobody is coordinated there
    table = text[text.index("topic\tpartition\tcommitted"):].splitlines()[1:]
    rows = [line.split("\t") for line in table]
    return {(x[0], int(x[1])): (int(x[2]) if x[2] != "-" else None, int(x[3])) for x in rows}


def test_broker_store_across_two_sets_resumes_and_follows_a_failover(tmp_path, zookeeper_server):
    hosts = chroot(zookeeper_server)
    url = "zk://" + hosts
    a = broker(tmp_path, "a", hosts, "master", 1, rs=1)
    b = broker(tmp_path, "b", hosts, "slave", 2, rs=1)
    c = broker(tmp_path, "c", hosts, "master", 3, rs=3)
    z = zk_client(hosts)
    g = "g" + uuid.uuid4().hex[:6]
    kw = dict(group_id=g, offset_store="broker", enable_auto_commit=False, auto_offset_reset="earliest", **OPTS)
    members: list = []
    try:
        wait_until(lambda: node(z, paths.master(3)) is not None and (node(z, paths.master(1)) or 0)
                   and node(z, paths.master(1)).insync == [2], 30, "both masters, set 1's slave in sync")
        make_topic(z, hosts)
        members = [Consumer(url, T, **kw), Consumer(url, T, **kw)]
        wait_for(lambda: (drain(members, 0, 0), settled(members, 8))[1], what="a split of 8 partitions")
        produce(url, "one", 100)
        got = drain(members, 100)
        assert sorted(m.value for m in got) == sorted(f"one{i}".encode() for i in range(100))
        for m in members:
            m.commit()
        layout = members[0].partitions(T)
        ends = Counter(layout[m.partition] for m in got)  # (set, partition) -> messages = its end offset
        for m in members:
            assert {gp: m.committed(gp) for gp in range(8)} == {gp: ends[layout[gp]] for gp in range(8)}
            m.close()
        members = []
        assert z.exists(paths.group_offset(g, T, 1, 0)) is None  # not in ZooKeeper: on the brokers
        # __consumer_offsets is each broker's own bookkeeping, not a cluster topic
        assert z.exists(paths.topic("__consumer_offsets")) is None or not z.get_children(paths.topic("__consumer_offsets"))

        # each set's master holds its own partitions' offsets, under the group's name
        for rs, br in ((1, a), (3, c)):
            rows = described(br.url, g)
            assert {p: rows[(T, p)] for p in range(4)} == {p: (ends[(rs, p)], ends[(rs, p)]) for p in range(4)}

        # a new member resumes exactly where the group left off: only what came after
        produce(url, "two", 40)
        members = [Consumer(url, T, **kw)]
        got = drain(members, 40)
        assert sorted(m.value for m in got) == sorted(f"two{i}".encode() for i in range(40))
        members[0].commit()
        committed = {gp: members[0].committed(gp) for gp in range(8)}
        members[0].close()
        members = []
        assert sum(committed.values()) == 140

        # kill -9 set 1's master: its slave promotes itself, with the replicated __consumer_offsets
        a.kill()
        wait_until(lambda: (node(z, paths.master(1)) or 0) and node(z, paths.master(1)).broker_id == 2, 60,
                   "set 1's slave to promote itself", state=b.log)
        rows = described(b.url, g)
        assert {p: rows[(T, p)][0] for p in range(4)} == {p: committed[layout.index((1, p))] for p in range(4)}
        produce(url, "three", 30)
        members = [Consumer(url, T, **kw)]
        got = drain(members, 30)
        assert sorted(m.value for m in got) == sorted(f"three{i}".encode() for i in range(30))
        assert {layout[m.partition][0] for m in got} == {1, 3}  # both sets, set 1 from the promoted slave
        assert sorted(members[0].assignment()) == [(T, gp) for gp in range(8)]
    finally:
        for m in members:
            m.close()
        z.stop()
        z.close()
        stop_all(a, b, c)


@pytest.fixture(scope="module")
def two_masters(tmp_path_factory, zookeeper_server):
    """Sets 1 and 3, a master each (no slave): shared by the tests below, each with a group of its own."""
    tmp_path = tmp_path_factory.mktemp("two")
    hosts = chroot(zookeeper_server)
    a = broker(tmp_path, "a", hosts, "master", 1, rs=1)
    c = broker(tmp_path, "c", hosts, "master", 3, rs=3)
    z = zk_client(hosts)
    try:
        wait_until(lambda: node(z, paths.master(1)) is not None and node(z, paths.master(3)) is not None, 30,
                   "both masters registered")
        yield hosts, a, c, z
    finally:
        z.stop()
        z.close()
        stop_all(a, c)


def test_a_zk_commit_to_the_broker_store_is_refused_while_a_broker_group_of_that_name_lives(two_masters):
    hosts, a, c, z = two_masters
    url = "zk://" + hosts
    t = "ne" + uuid.uuid4().hex[:6]
    make_topic(z, hosts, t)
    g = "g" + uuid.uuid4().hex[:6]
    produce(url, "x", 40, t)
    # a group coordinated by set 1's master, of the same name, reading that master's 4 partitions
    local = Consumer(a.url, t, group_id=g, enable_auto_commit=False, auto_offset_reset="earliest", **OPTS)
    zc = Consumer(url, t, group_id=g, offset_store="broker", enable_auto_commit=False, auto_offset_reset="earliest",
                  **OPTS)
    try:
        got = wait_for(lambda: (local.poll(100), len(local.assignment()) == 4)[1], what="the broker group's member")
        ends = local.end_offsets()
        wait_for(lambda: (local.poll(100), all(local.position(p) == ends[p] for p in range(4)))[1],
                 what="the broker group's member to read its partitions")
        assert len(drain([zc], 40)) == 40
        layout = zc.partitions(t)
        pos = {gp: zc.position(gp) for gp in range(8)}
        set1 = {gp: o for gp, o in pos.items() if layout[gp][0] == 1}
        set3 = {gp: o for gp, o in pos.items() if layout[gp][0] == 3}
        with pytest.raises(BrokerError) as e:
            zc.commit(set1)
        assert e.value.code == ErrorCode.NON_EMPTY_GROUP
        zc.commit(set3)  # set 3's master coordinates no such group: taken
        local.commit()  # the broker-coordinated member's own commits are unchanged
        assert {p: local.committed(p) for p in range(4)} == {p: ends[p] for p in range(4)}
        assert [zc.committed(gp) for gp in set1] == [ends[layout[gp][1]] for gp in set1]  # the member's commits
        local.close()
        local = None
        zc.commit({gp: 0 for gp in set1})  # its members gone: the zk:// group's commit is taken
        assert {gp: zc.committed(gp) for gp in range(8)} == {**set3, **{gp: 0 for gp in set1}}
        assert got
    finally:
        if local is not None:
            local.close()
        zc.close()


def test_two_broadcast_instances_each_read_everything_with_offsets_of_their_own(two_masters, tmp_path):
    hosts, _a, _c, z = two_masters
    url = "zk://" + hosts
    t = "bc" + uuid.uuid4().hex[:6]
    make_topic(z, hosts, t)
    g = "bc" + uuid.uuid4().hex[:6]
    path = str(tmp_path / "offsets.json")
    kw = dict(group_id=g, broadcast=True, offset_store_path=path, auto_offset_reset="earliest",
              enable_auto_commit=False, **OPTS)
    produce(url, "x", 60, t)
    c1 = Consumer(url, t, instance_name="one", **kw)
    c2 = Consumer(url, t, instance_name="two", **kw)
    try:
        for c in (c1, c2):
            assert sorted(c.assignment()) == [(t, gp) for gp in range(8)]  # every global partition
            got = drain([c], 60)
            assert sorted(m.value for m in got) == sorted(f"x{i}".encode() for i in range(60))
        layout = c1.partitions(t)
        c1.commit()  # the first commits everything it read; the second only set 3's partitions
        set3 = {gp: c2.position(gp) for gp in range(8) if layout[gp][0] == 3}
        c2.commit(set3)
        c1.close()
        c2.close()
        # the file store, MetaQ's LocalOffsetStorage: each instance under <group>-<instance>
        st = FileOffsetStore(path)
        try:
            one = st.load(f"{g}-one", [(f"{t}@{rs}", p) for rs, p in layout])
            two = st.load(f"{g}-two", [(f"{t}@{rs}", p) for rs, p in layout])
            assert st.load(g, [(f"{t}@{rs}", p) for rs, p in layout]) == {}  # nothing under the group's own name
        finally:
            st.close()
        assert sum(one.values()) == 60 and len(one) == 8
        assert two == {(f"{t}@{layout[gp][0]}", layout[gp][1]): o for gp, o in set3.items()}
        assert json.loads(open(path).read())  # a plain local file
        # each resumes from its own offsets: the first reads only what is new, the second re-reads set 1's
        produce(url, "y", 16, t)
        c1 = Consumer(url, t, instance_name="one", **kw)
        c2 = Consumer(url, t, instance_name="two", **kw)
        got1 = drain([c1], 16)
        assert sorted(m.value for m in got1) == sorted(f"y{i}".encode() for i in range(16))
        x1 = sum(o for gp, o in c1.end_offsets().items() if layout[gp][0] == 1) - sum(
            1 for m in got1 if layout[m.partition][0] == 1)  # set 1's "x" messages
        got2 = drain([c2], x1 + 16)
        assert Counter(m.value[:1] for m in got2) == {b"x": x1, b"y": 16}
        assert {layout[m.partition][0] for m in got2 if m.value[:1] == b"x"} == {1}
    finally:
        c1.close()
        c2.close()


class SetDownStore(FileOffsetStore):
    """A custom store (a file) whose set 3 rows cannot be read while ``down``: a store, or with the
    ``broker`` store a set's master, that does not answer."""

    down = False

    def load(self, group, partitions):
        partitions = list(partitions)
        if self.down and any(t.endswith("@3") for t, _ in partitions):
            raise OffsetStoreError("set 3's offsets cannot be reached")
        return super().load(group, partitions)


def test_partitions_whose_offsets_cannot_be_read_wait_instead_of_resetting(two_masters, tmp_path):
    hosts, _a, _c, z = two_masters
    url = "zk://" + hosts
    t = "dn" + uuid.uuid4().hex[:6]
    make_topic(z, hosts, t)
    produce(url, "x", 40, t)
    store = SetDownStore(str(tmp_path / "offsets.json"))
    with Consumer(url, t, **OPTS) as c:
        layout = c.partitions(t)
        ends = c.end_offsets()
    g = "dn" + uuid.uuid4().hex[:6]
    store.commit(g, {(f"{t}@3", layout[gp][1]): o for gp, o in ends.items() if layout[gp][0] == 3})
    store.down = True
    c = Consumer(url, t, group_id=g, offset_store=store, enable_auto_commit=False, auto_offset_reset="earliest",
                 **OPTS)
    try:
        got = drain([c], 40, timeout=3)  # set 1's from the start (nothing committed there); none of set 3's
        x1 = sum(o for gp, o in ends.items() if layout[gp][0] == 1)
        assert len(got) == x1 and {layout[m.partition][0] for m in got} == {1}
        assert len(c.assignment()) == 8  # owned, not fetched
        store.down = False  # read again within a second: set 3 resumes at its committed offsets
        produce(url, "y", 16, t)
        got = drain([c], 16)
        assert sorted(m.value for m in got) == sorted(f"y{i}".encode() for i in range(16))
    finally:
        c.close()
