"""Issue 22 end to end: three brokers on a real ZooKeeper - a master-slave
pair (replica set 1) and a second master (set 3) - one topic spread over
both sets, a keyed acks=all producer and a group of two consumers, all
through ``zk://``.  Five times: kill -9 set 1's master; its slave takes
over by itself; producer and consumers go on; the killed broker comes back
with its old flags, becomes a slave and catches up.  At the end nothing
acknowledged is missing, every acknowledged message was consumed, and the
two brokers of set 1 are byte-identical (``hpbroker log verify --compare``).
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from hpbroker import Consumer, Producer
from hpbroker.client.partitioner import partition_for_key
from hpbroker.cluster import paths
from hpbroker.protocol import messages as m
from rawclient import RawClient
from ports import free_port
from servers import own_zookeeper
from test_cluster_broker import broker, chroot, node, role_of, stop_all, zk_client
from test_replication import compare, stats, wait_until


@pytest.fixture(scope="module")
def zookeeper_server():
    """This module's own ZooKeeper (servers.own_zookeeper): a group of its own under xdist."""
    yield from own_zookeeper()

TOPIC, PER_SET, CYCLES = "orders", 4, 5


def ends(b) -> list[int]:
    c = RawClient(b.url, timeout_ms=5000)
    try:
        return [c.call(m.ListOffsets(id=c.next_id(), topic=TOPIC, partition=p, spec=m.LATEST))[0].offset
                for p in range(PER_SET)]
    finally:
        c.close()


def in_step(mst, slv) -> bool:
    try:
        return role_of(slv) == "slave" and stats(mst)["messages"] == stats(slv)["messages"] and ends(mst) == ends(slv)
    except Exception:  # noqa: BLE001 - one of them is still starting
        return False


class Load:
    """A keyed acks=all producer in a thread: what it had acknowledged, and where."""

    def __init__(self, url: str):
        self.p = Producer(url, acks="all", retries=100, retry_backoff_ms=100, request_timeout_ms=2000,
                          connect_timeout_ms=2000)
        self.acked: dict[bytes, int] = {}  # value -> global partition
        self.failed = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            futs = []
            for _ in range(20):
                v = b"m%06d" % i
                futs.append((v, self.p.send(TOPIC, v, key=b"k%d" % (i % 64))))
                i += 1
            for v, f in futs:
                try:
                    self.acked[v] = f.get(120).partition
                except Exception:  # noqa: BLE001 - not acknowledged: may or may not be there
                    self.failed += 1
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.t.join(180)
        self.p.close(10)


class Member:
    """A group member polling in a thread; it commits after each poll."""

    def __init__(self, url: str):
        self.c = Consumer(url, TOPIC, group_id="billing", auto_offset_reset="earliest", fetch_max_wait_ms=200,
                          request_timeout_ms=2000, connect_timeout_ms=2000)
        self.seen: list[bytes] = []
        self.errors = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                got = self.c.poll(200)
                self.seen += [msg.value for msg in got]
                if got:
                    self.c.commit()
            except Exception:  # noqa: BLE001 - a failover under it: poll again
                self.errors += 1
                time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.t.join(60)
        self.c.close()


def test_five_failovers_under_a_keyed_producer_and_a_group_lose_nothing(tmp_path, zookeeper_server):
    hosts = chroot(zookeeper_server)
    url = "zk://" + hosts
    dirs = {1: "a", 2: "b"}
    bs = {1: broker(tmp_path, "a", hosts, "master", 1, rs=1), 2: broker(tmp_path, "b", hosts, "slave", 2, rs=1)}
    third = broker(tmp_path, "c", hosts, "master", 3, rs=3)
    z = zk_client(hosts)
    load = members = None
    try:
        wait_until(lambda: node(z, paths.master(3)) is not None and node(z, paths.master(1)) is not None
                   and node(z, paths.master(1)).insync == [2], 30, "both masters up, set 1's slave in sync")
        from test_cluster_client import hpbroker

        r = hpbroker("topics", "create", TOPIC, "--partitions", str(2 * PER_SET), "--brokers", "1,3",
                     "--zookeeper", hosts)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: z.exists(paths.topic_master(TOPIC, 1)) and z.exists(paths.topic_master(TOPIC, 3)), 30,
                   "both masters to register the topic")
        load = Load(url)
        members = [Member(url), Member(url)]
        master_id = 1
        for cycle in range(CYCLES):
            slave_id = 3 - master_id
            mst, slv = bs[master_id], bs[slave_id]
            wait_until(lambda: in_step(mst, slv), 90, f"cycle {cycle}: the slave in step")
            n = len(load.acked)
            wait_until(lambda: len(load.acked) >= n + 200, 60, f"cycle {cycle}: acks before the kill")
            mst.kill()  # kill -9 of the process group
            wait_until(lambda: role_of(slv) == "master", 30, f"cycle {cycle}: the slave to take over", state=slv.log)
            n = len(load.acked)
            wait_until(lambda: len(load.acked) >= n + 200, 60, f"cycle {cycle}: acks after the take-over")
            # the killed one comes back with its old flags; ZooKeeper makes it a slave
            bs[master_id] = broker(tmp_path, dirs[master_id], hosts, "master", master_id, rs=1, port=mst.port)
            master_id = slave_id
        wait_until(lambda: in_step(bs[master_id], bs[3 - master_id]), 90, "the last catch-up")
        load.close()
        acked = dict(load.acked)
        assert len(acked) > CYCLES * 400

        def consumed() -> set[bytes]:
            return set(members[0].seen) | set(members[1].seen)

        wait_until(lambda: set(acked) <= consumed(), 120, "every acknowledged message consumed",
                   state=lambda: len(set(acked) - consumed()))
        for mb in members:
            mb.close()
        # keyed: each value where its key hashes over the global list of 8 partitions
        for v, part in acked.items():
            assert part == partition_for_key(b"k%d" % (int(v[1:]) % 64), 2 * PER_SET)
        # both members had a share (the group split the 8 partitions)
        assert members[0].seen and members[1].seen
        # nothing acknowledged is missing from a fresh read of the whole topic
        with Consumer(url, TOPIC, auto_offset_reset="earliest", fetch_max_wait_ms=200) as c:
            everything: set[bytes] = set()
            deadline = time.monotonic() + 60
            while not set(acked) <= everything and time.monotonic() < deadline:
                everything.update(msg.value for msg in c.poll(500))
        assert set(acked) <= everything
    finally:
        if load is not None and not load.stop.is_set():
            load.close()
        for mb in members or ():
            if not mb.stop.is_set():
                mb.close()
        z.stop()
        z.close()
        stop_all(*bs.values(), third)
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0 and "DIFFER" not in r.stdout, r.stdout + r.stderr
    for p in range(PER_SET):  # every partition of set 1, whole: the same ends on both
        line = next(x for x in r.stdout.splitlines() if x.startswith(f"SAME {TOPIC}-{p}:"))
        a_end, b_end = re.search(r"logs end at (\d+) and (\d+)", line).groups()
        assert a_end == b_end and int(a_end) > 0, line


def test_any_brokers_metadata_gives_the_whole_map(tmp_path, zookeeper_server):
    """Issue 22: "Any broker's Metadata reply gives the whole map" - a slave's too."""
    from hpbroker.client.request import request

    hosts = chroot(zookeeper_server)
    a = broker(tmp_path, "a", hosts, "master", 1, rs=1)
    b = broker(tmp_path, "b", hosts, "slave", 2, rs=1)
    text_port = free_port()
    c = broker(tmp_path, "c", hosts, "master", 3, rs=3, args=("--text-port", str(text_port)))
    try:
        from test_cluster_client import hpbroker

        r = hpbroker("topics", "create", "spread", "--partitions", "6", "--brokers", "1,3", "--zookeeper", hosts)
        assert r.returncode == 0, r.stderr

        def maps():
            out = {}
            for x in (a, b, c):
                try:
                    out[x.url] = request(x.url, lambda i: m.Metadata(id=i, topics=None), 2000).cluster
                except Exception:  # noqa: BLE001 - a killed one
                    out[x.url] = None
            return out

        def whole(mp) -> bool:
            return (mp is not None and [s.replica_set for s in mp.sets] == [1, 3]
                    and any(t.name == "spread" and t.sets == [[1, 3], [3, 3]] for t in mp.topics))

        wait_until(lambda: all(whole(mp) for mp in maps().values()), 30, "every broker to answer with the map",
                   state=maps)
        mp = maps()[b.url]
        s1, s3 = mp.sets
        assert (s1.master, s1.master_id, s1.slaves) == (a.url, 1, [b.url])
        assert (s3.master, s3.master_id, s3.slaves) == (c.url, 3, [])
        assert s1.epoch == stats(a)["leader_epoch"] and mp.zookeeper == hosts
        # a request that names topics gets those topics' spread only
        named = request(c.url, lambda i: m.Metadata(id=i, topics=["spread"]), 5000).cluster
        assert [t.name for t in named.topics] == ["spread"] and len(named.sets) == 2
        cluster_stats(hosts, a, b, c, text_port)
        # a failover shows on every broker's map
        a.kill()
        wait_until(lambda: all(mp is not None and mp.sets and mp.sets[0].master == b.url
                               for u, mp in maps().items() if u != a.url), 30, "the new master in the map",
                   state=maps)
    finally:
        stop_all(a, b, c)
    # a broker outside a cluster answers without a map
    from brokerproc import BrokerProcess

    s = BrokerProcess(tmp_path / "standalone").start()
    try:
        assert request(s.url, lambda i: m.Metadata(id=i, topics=None), 5000).cluster is None
    finally:
        s.stop()


def test_hpbroker_tail_ships_files_into_a_cluster(tmp_path, zookeeper_server):
    """``hpbroker tail --broker zk://...``: log files shipped over two replica
    sets (the global partition list from ZooKeeper, each file's records to one
    partition in order), every line once, and a restart ships only what is new."""
    import subprocess
    import sys

    from test_cluster_client import hpbroker

    hosts = chroot(zookeeper_server)
    a = broker(tmp_path, "a", hosts, "master", 1, rs=1)
    c = broker(tmp_path, "c", hosts, "master", 3, rs=3)
    try:
        r = hpbroker("topics", "create", "shipped", "--partitions", "4", "--brokers", "1,3", "--zookeeper", hosts)
        assert r.returncode == 0, r.stderr
        logs = tmp_path / "logs"
        logs.mkdir()
        from hpbroker.tail.router import path_partition

        # six files, more if needed until both sets get one (the rule is a hash of the path: tmp paths vary)
        names = [f"app{i}.log" for i in range(6)]
        while len({path_partition(str(logs / n), 4) // 2 for n in names}) < 2:
            names.append(f"app{len(names)}.log")
        where = {n: path_partition(str(logs / n), 4) for n in names}
        files = {n: [f"{n[:-4]} line {k:05d}" for k in range(400)] for n in names}
        for name, lines in files.items():
            (logs / name).write_text("".join(line + "\n" for line in lines))
        tail = [sys.executable, "-m", "hpbroker", "tail", "--broker", "zk://" + hosts, "--topic", "shipped",
                str(logs / "*.log"), "--state-dir", str(tmp_path / "state"), "--once", "--quiet", "--acks", "all"]
        r = subprocess.run(tail, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        with open(logs / "app0.log", "a") as f:  # more lines, then a second run: only those are shipped
            f.write("".join(f"app0 more {n}\n" for n in range(50)))
        files["app0.log"] += [f"app0 more {n}" for n in range(50)]
        r = subprocess.run(tail, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr

        got: dict[int, list[str]] = {}
        total = sum(map(len, files.values()))
        with Consumer("zk://" + hosts, "shipped", auto_offset_reset="earliest") as cons:
            deadline = time.monotonic() + 60
            while sum(map(len, got.values())) < total and time.monotonic() < deadline:
                for msg in cons.poll(timeout_ms=500):
                    got.setdefault(msg.partition, []).append(msg.value.decode())
        lines = [x for part in got.values() for x in part]
        assert sorted(lines) == sorted(x for v in files.values() for x in v)  # every line, once
        assert set(got) == set(where.values())  # global partitions 0-1 on set 1, 2-3 on set 3 (--brokers 1,3)
        for name, want in files.items():  # each file in its path's partition, in its order
            assert [x for x in got[where[name]] if x.startswith(name[:-4] + " ")] == want, name
    finally:
        stop_all(a, c)


def cluster_stats(hosts: str, a, b, c, text_port: int) -> None:
    """Issue 23: ``hpbroker stats`` per cluster - every registered broker's block, then the masters' totals."""
    import json

    from metaq_client import MetaQClient
    from test_cluster_client import hpbroker

    with Producer("zk://" + hosts, acks="all") as p:
        for i in range(60):
            p.send("spread", b"m%d" % i, key=b"%d" % i)
        p.flush(30)
    with MetaQClient("127.0.0.1", text_port) as q:
        q.put_many("spread", 0, [b"t%d" % i for i in range(7)])  # set 3's local partition 0, over the text port
    r = hpbroker("stats", "--broker", "zk://" + hosts, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(x["replica_set"], x["broker_id"], x["role"]) for x in out["brokers"]] == [
        (1, 1, "master"), (1, 2, "slave"), (3, 3, "master")]
    by_id = {x["broker_id"]: x["stats"] for x in out["brokers"]}
    assert by_id[1]["role"] == "master" and by_id[2]["role"] == "slave" and by_id[3]["role"] == "master"
    assert int(by_id[1]["messages"]) + int(by_id[3]["messages"]) == 67 == out["cluster"]["messages"]
    assert int(by_id[1]["messages"]) > 0 and int(by_id[3]["messages"]) > 7  # the keys spread over both sets
    # the text listeners' general item: only c has a text port; a and b say so, the exit code says it
    r = hpbroker("stats", "--broker", "zk://" + hosts, "--text")
    assert r.returncode == 1, r.stdout
    blocks = r.stdout.split("END\n")
    assert blocks[0].startswith("BROKER set=1 id=1 role=master") and "ERROR no MetaQ text port registered" in blocks[0]
    assert blocks[2].startswith("BROKER set=3 id=3 role=master") and "STAT cmd_put 7\n" in blocks[2]
    assert blocks[3].startswith("CLUSTER masters=2 brokers=3") and "STAT cmd_put 7\n" in blocks[3]
    # a topic item: no totals
    r = hpbroker("stats", "--broker", "zk://" + hosts, "topics")
    assert "CLUSTER" not in r.stdout and "STAT spread" in r.stdout.split("END\n")[2]
    # a ZooKeeper that is not there: one line, exit 1
    r = hpbroker("stats", "--broker", f"zk://127.0.0.1:{free_port()}", "--connect-timeout-ms", "1000")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "cannot reach ZooKeeper" in r.stderr, r.stderr


def test_readyz_fails_while_a_master_is_fenced_from_zookeeper(tmp_path):
    """/readyz's zookeeper check: a master cut off from ZooKeeper (its server stopped) is not ready
    once it fences itself, and ready again when ZooKeeper is back; a broker outside a cluster says
    "not configured"."""
    import json
    import urllib.error
    import urllib.request

    from brokerproc import BrokerProcess, free_port
    from test_cluster_broker import SESSION_MS, RestartableZooKeeper, toml

    def readyz(b):
        try:
            with urllib.request.urlopen(b.http_url + "/readyz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    server = RestartableZooKeeper().start()
    b = None
    try:
        b = BrokerProcess(tmp_path / "a", args=("--config", toml(tmp_path, "a"), "--role", "master", "--broker-id", "1",
                                                "--zookeeper", f"{server.hosts}/ready", "--http-port",
                                                str(free_port())))
        b.start()
        b.wait_http()
        wait_until(lambda: readyz(b)[0] == 200, 30, "ready", state=lambda: readyz(b))
        assert readyz(b)[1]["checks"]["zookeeper"] == "ok"
        server.halt()
        wait_until(lambda: readyz(b)[0] == 503, 10 + SESSION_MS / 1000, "not ready once fenced",
                   state=lambda: readyz(b))
        assert readyz(b)[1]["checks"]["zookeeper"].startswith("fenced:")
        server.resume()
        wait_until(lambda: readyz(b)[0] == 200, 60, "ready again", state=lambda: readyz(b))
    finally:
        if b is not None:
            b.stop()
        server.stop()
    plain = BrokerProcess(tmp_path / "plain", args=("--http-port", str(free_port()))).start()
    try:
        plain.wait_http()
        wait_until(lambda: readyz(plain)[0] == 200, 30, "ready")
        assert readyz(plain)[1]["checks"]["zookeeper"] == "not configured"
    finally:
        plain.stop()


def test_transactions_through_zk_stay_on_one_replica_set(tmp_path, zookeeper_server):
    """A zk:// producer's transactions, local and XA: each bound to one replica
    set (docs/client.md, "Transactions in a cluster").  Keyless messages of two
    topics go to the bound set's partitions, invisible until the commit and all
    visible after it; a key that maps to the other set is refused and the
    transaction goes on; a rolled-back one is never seen; a prepared XA branch
    is found by another producer's tpc_recover() and committed there."""
    from hpbroker.protocol.errors import BrokerError, ErrorCode
    from test_cluster_client import hpbroker

    hosts = chroot(zookeeper_server)
    a = broker(tmp_path, "a", hosts, "master", 1, rs=1)
    c = broker(tmp_path, "c", hosts, "master", 3, rs=3)
    url = "zk://" + hosts

    def read(cons, want: int, seconds: float) -> list:
        got, deadline = [], time.monotonic() + seconds
        while len(got) < want and time.monotonic() < deadline:
            got += cons.poll(timeout_ms=300)
        return got

    try:
        for t in ("txa", "txb"):
            r = hpbroker("topics", "create", t, "--partitions", "4", "--brokers", "1,3", "--zookeeper", hosts)
            assert r.returncode == 0, r.stderr
        with Producer(url, acks="all") as p, \
                Consumer(url, ["txa", "txb"], auto_offset_reset="earliest") as cons:
            parts = p.partitions("txa")
            assert [rs for rs, _ in parts] == [1, 1, 3, 3]
            on_set1 = next(k for k in (b"k%d" % i for i in range(100)) if parts[partition_for_key(k, 4)][0] == 1)

            tx = p.transaction(replica_set=3)
            for i in range(20):
                tx.send("txa", b"a%d" % i)
            tx.send_batch("txb", [b"b0", b"b1"])
            with pytest.raises(BrokerError) as e:
                tx.send("txa", b"elsewhere", key=on_set1)
            assert e.value.code == ErrorCode.BAD_REQUEST and "replica set 1" in str(e.value)
            tx.flush()  # in the set's journal now, and still invisible
            assert read(cons, 1, 2.0) == []
            tx.commit()
            got = read(cons, 22, 30)
            assert sorted(x.value for x in got) == sorted([b"a%d" % i for i in range(20)] + [b"b0", b"b1"])
            assert {x.partition for x in got} <= {2, 3}  # global partitions 2 and 3 are set 3's

            with pytest.raises(RuntimeError):
                with p.transaction() as tx2:
                    tx2.send("txb", b"rolled back")
                    raise RuntimeError("the block fails: the transaction rolls back")

            xid = p.xid(7, "global-1", "hpbroker")
            p.tpc_begin(xid)
            assert p.send("txa", b"xa0", key=on_set1) is None
            p.send("txa", b"xa1", key=on_set1)
            p.tpc_prepare()
        with Producer(url) as coordinator:  # a recovering coordinator: another process would do the same
            assert xid in coordinator.tpc_recover()
            coordinator.tpc_commit(xid)
            assert xid not in coordinator.tpc_recover()
            with pytest.raises(BrokerError) as e:
                coordinator.tpc_rollback(xid)
            assert e.value.code == ErrorCode.UNKNOWN_TRANSACTION
        with Consumer(url, ["txa", "txb"], auto_offset_reset="earliest") as cons:
            got = read(cons, 24, 30)
            assert read(cons, 1, 1.0) == []  # anything more would be the rolled-back message
            values = [x.value for x in got]
            assert b"rolled back" not in values and len(values) == 24
            xa = [x for x in got if x.value.startswith(b"xa")]
            assert [x.value for x in xa] == [b"xa0", b"xa1"]
            assert {x.partition for x in xa} == {partition_for_key(on_set1, 4)}
    finally:
        stop_all(a, c)


def test_dlq_replay_through_zk(tmp_path, zookeeper_server):
    """``hpbroker dlq replay TOPIC GROUP --broker zk://...``: dead letters parked on
    both replica sets go back to the global partitions their headers name, and
    a second replay repeats nothing (its offsets in ZooKeeper)."""
    import subprocess
    import sys

    from test_cluster_client import hpbroker

    hosts = chroot(zookeeper_server)
    a = broker(tmp_path, "a", hosts, "master", 1, rs=1)
    c = broker(tmp_path, "c", hosts, "master", 3, rs=3)
    url = "zk://" + hosts
    try:
        for t in ("jobs", "jobs.billing.dlq"):
            r = hpbroker("topics", "create", t, "--partitions", "4", "--brokers", "1,3", "--zookeeper", hosts)
            assert r.returncode == 0, r.stderr
        with Producer(url, acks="all") as p:
            for i in range(8):  # dead letter i came from global partition i % 4; parked on dlq partition (i + 1) % 4
                p.send("jobs.billing.dlq", b"job-%d" % i, key=b"k%d" % i, partition=(i + 1) % 4,
                       headers=[("trace", b"t%d" % i), ("hpbroker.dlq.topic", b"jobs"),
                                ("hpbroker.dlq.partition", b"%d" % (i % 4)), ("hpbroker.dlq.error", b"boom")])
            p.flush()
        replay = [sys.executable, "-m", "hpbroker", "dlq", "replay", "jobs", "billing", "--broker", url]
        r = subprocess.run(replay, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "replayed 8 dead letters" in r.stdout, r.stdout + r.stderr
        got = []
        with Consumer(url, "jobs", auto_offset_reset="earliest") as cons:
            deadline = time.monotonic() + 30
            while len(got) < 8 and time.monotonic() < deadline:
                got += cons.poll(timeout_ms=300)
        # each to the global partition it came from, key and own headers kept, the hpbroker.dlq.* ones gone
        assert sorted((x.value, x.partition, x.key, [(n, bytes(v)) for n, v in x.headers]) for x in got) == [
            (b"job-%d" % i, i % 4, b"k%d" % i, [("trace", b"t%d" % i)]) for i in range(8)]
        r = subprocess.run(replay, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "nothing to replay" in r.stdout, r.stdout + r.stderr
    finally:
        stop_all(a, c)
