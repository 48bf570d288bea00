"""A group consumer commits to each offset store, is restarted, and resumes
at the committed offsets; broadcast instances each read everything and
keep their own offsets.  Real broker; real PostgreSQL and ZooKeeper servers
(tests/servers.py)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from hpbroker.client import BrokerError, Consumer, Producer
from hpbroker.client.stores import FileOffsetStore

# The PostgreSQL/ZooKeeper tests run on one xdist worker, so each server starts once a run
# (tests/conftest.py: SHARED_SERVERS; they are requested through getfixturevalue here).
pytestmark = pytest.mark.xdist_group("shared-servers")

TOPIC = "stored"
N = 120


class DictStore:
    """A custom store, named in config as ``test_consumer_stores:DictStore``."""

    data: dict = {}

    def __init__(self, **options):
        self.options = options

    def load(self, group, partitions):
        return {tp: self.data[(group, tp)] for tp in partitions if (group, tp) in self.data}

    def commit(self, group, offsets):
        for tp, o in offsets.items():
            DictStore.data[(group, tp)] = o

    def close(self):
        pass


def fill(url: str, n: int = N, topic: str = TOPIC) -> None:
    with Producer(url) as p:
        for i in range(n):
            p.send(topic, str(i).encode(), partition=i % 4)
        p.flush(30)


def read(c: Consumer, n: int, timeout_s: float = 30) -> list[int]:
    out: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += [int(m.value) for m in c.poll(200, max_records=n - len(out))]
    return out


def store_args(kind: str, tmp_path, request) -> dict:
    if kind == "broker":
        return {}
    if kind == "file":
        return {"offset_store": "file", "offset_store_path": str(tmp_path / "offsets.json")}
    if kind == "sqlite":
        return {"offset_store": "sql", "offset_store_connection": lambda: sqlite3.connect(tmp_path / "o.db")}
    if kind == "postgresql":
        pg = request.getfixturevalue("postgres_server")
        return {"offset_store": "sql", "offset_store_connection": pg.connect}
    if kind == "zookeeper":
        zk = request.getfixturevalue("zookeeper_server")
        return {"offset_store": "zookeeper", "offset_store_hosts": zk.hosts}
    if kind == "custom":
        DictStore.data = {}
        return {"offset_store": "test_consumer_stores:DictStore"}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["broker", "file", "sqlite", "postgresql", "zookeeper", "custom"])
def test_a_group_consumer_resumes_at_its_committed_offsets(kind, broker, tmp_path, request):
    fill(broker.url)
    group = f"resume-{kind}"
    args = store_args(kind, tmp_path, request)
    with Consumer(broker.url, TOPIC, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                  **args) as c:
        first = read(c, N // 2)
        c.commit()
        at = {p: c.position(p) for p in range(4)}
        assert {p: c.committed(p) for p in range(4)} == at
    assert len(first) == N // 2
    # a new consumer of the group (a restart) starts where the first committed
    with Consumer(broker.url, TOPIC, group_id=group, auto_offset_reset="earliest", **args) as c:
        rest = read(c, N - len(first))
        assert {p: c.position(p) for p in range(4)} == {p: N // 4 for p in range(4)}
    assert sorted(first + rest) == list(range(N))  # each message once: nothing skipped, nothing repeated


def test_an_unreachable_store_is_one_clear_error_and_nothing_moves(broker, tmp_path):
    from servers import free_port

    fill(broker.url)
    from hpbroker.client.stores import OffsetStoreError

    with pytest.raises(OffsetStoreError, match="127.0.0.1"):
        with Consumer(broker.url, TOPIC, group_id="nozk", offset_store="zookeeper",
                      offset_store_hosts=f"127.0.0.1:{free_port()}", auto_offset_reset="earliest",
                      session_timeout_ms=3000) as c:
            read(c, 1, timeout_s=60)


def test_broadcast_instances_each_read_everything_and_keep_their_own_offsets(broker, tmp_path):
    fill(broker.url)
    path = str(tmp_path / "bcast.json")
    kw = dict(group_id="caches", broadcast=True, auto_offset_reset="earliest", offset_store_path=path)
    a = Consumer(broker.url, TOPIC, instance_name="host-a", **kw)
    b = Consumer(broker.url, TOPIC, instance_name="host-b", **kw)
    try:
        assert sorted(read(a, N)) == list(range(N))
        assert sorted(read(b, N)) == list(range(N))
    finally:
        a.close(), b.close()
    saved = FileOffsetStore(path).load("caches-host-a", [(TOPIC, p) for p in range(4)])
    assert saved == {(TOPIC, p): N // 4 for p in range(4)}
    fill(broker.url, 8)  # 8 more: instance a resumes after what it had read
    with Consumer(broker.url, TOPIC, instance_name="host-a", **kw) as a:
        assert sorted(read(a, 8)) == list(range(8))
        assert a.poll(300) == []


def test_commit_without_a_group_is_refused(broker):
    fill(broker.url, 4)
    with Consumer(broker.url, TOPIC, auto_offset_reset="earliest") as c:
        with pytest.raises(RuntimeError, match="group_id"):
            c.commit()


def test_a_manual_commit_to_a_live_group_is_refused(broker):
    fill(broker.url, 8)
    with Consumer(broker.url, TOPIC, group_id="live", auto_offset_reset="earliest") as member:
        read(member, 8)
        with Consumer(broker.url, TOPIC, group_id="live", partitions=[0], enable_auto_commit=False) as manual:
            with pytest.raises(BrokerError) as e:
                manual.commit({0: 1})
            assert e.value.code == 19  # NON_EMPTY_GROUP


def test_bad_group_requests_get_clear_error_codes(broker):
    from rawclient import RawClient
    from hpbroker.protocol import messages as m

    fill(broker.url, 8)
    c = RawClient(broker.url)
    rep, _ = c.call(m.DescribeGroup(id=c.next_id(), group="nobody"))
    assert rep.code == 18 and "nobody" in rep.message  # GROUP_ID_NOT_FOUND
    rep, _ = c.call(m.OffsetCommit(id=c.next_id(), group="g", offsets=[m.OffsetEntry(TOPIC, 0, 999)]))
    assert rep.code == 11 and "outside the log" in rep.message  # OFFSET_OUT_OF_RANGE
    rep, _ = c.call(m.OffsetCommit(id=c.next_id(), group="g", offsets=[m.OffsetEntry("nosuch", 0, 0)]))
    assert rep.code == 1  # UNKNOWN_TOPIC_OR_PARTITION
    rep, _ = c.call(m.OffsetCommit(id=c.next_id(), group="g", member_id="ghost", member_epoch=3,
                                   offsets=[m.OffsetEntry(TOPIC, 0, 1)]))
    assert rep.code == 16  # UNKNOWN_MEMBER_ID
    rep, _ = c.call(m.GroupHeartbeat(id=c.next_id(), group="g", member_id="x", topics=[TOPIC], assignor="magic"))
    assert rep.code == 7 and "magic" in rep.message
    rep, _ = c.call(m.GroupHeartbeat(id=c.next_id(), group="g", member_id="x", topics=[TOPIC], session_timeout_ms=5))
    assert rep.code == 7 and "session_timeout_ms" in rep.message
    from hpbroker import batch

    rep, _ = c.call(m.Produce(id=c.next_id(), topic="__consumer_offsets", partition=0), [batch.encode_batch([b"x"])])
    assert rep.code == 7 and "internal" in rep.message
    # and the broker serves on: a commit that is fine still works
    rep, _ = c.call(m.OffsetCommit(id=c.next_id(), group="g", offsets=[m.OffsetEntry(TOPIC, 0, 2)]))
    assert rep.code == 0
    rep, _ = c.call(m.OffsetFetch(id=c.next_id(), group="g"))
    assert [(e.topic, e.partition, e.offset) for e in rep.offsets] == [(TOPIC, 0, 2)]
