"""Transactions under sync replication: a failover between prepare and
commit.  The master is killed (-9) with XA branches prepared; the promoted
slave lists them as prepared (tpc_recover() and ``hpbroker tx list``);
alone it refuses to decide (acks=all), and once the old master is back as
its slave, committing one and rolling back the other there works, and
consumers of the new master see all of the committed ones, nothing of the
rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hpbroker import Consumer, Producer
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from rawclient import RawClient
from test_replication import master, promote, slave, stats, wait_until

TOPICS = ("txr-a", "txr-b")


def vals(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def consume_all(url: str, want: int, timeout: float = 60.0) -> list[bytes]:
    """Everything a consumer of ``url`` reads from the start of both topics,
    once it has ``want`` records (and a moment more for any extra)."""
    got: list[bytes] = []
    with Consumer(url, list(TOPICS), auto_offset_reset="earliest") as c:
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            got += [m.value for m in c.poll(timeout_ms=200, max_records=10_000)]
            if len(got) >= want:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() >= quiet_until:
                    break
    return got


def knows(b, topics) -> bool:
    """Does broker ``b``'s metadata list all of ``topics``?"""
    c = RawClient(b.url)
    try:
        rep = c.call(m.Metadata(id=c.next_id(), topics=None))[0]
        return set(topics) <= {t.name for t in rep.topics}
    finally:
        c.close()


def test_a_failover_between_prepare_and_commit(tmp_path):
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 60, "the slave to be in sync")
        committed: list[bytes] = []
        with Producer(a.url, acks="all", transaction_flush_bytes=2048) as p:
            with p.transaction() as tx:  # committed before the failover
                for t in TOPICS:
                    for q in range(3):
                        tx.send_batch(t, vals(f"local-{t}-{q}", 20), partition=q)
                        committed += vals(f"local-{t}-{q}", 20)
            open_tx = p.transaction()  # journalled (past the flush size), never decided
            open_tx.send_batch(TOPICS[0], vals("open", 100), partition=0)
            branches = {}
            for name in ("keep", "drop"):
                px = Producer(a.url, acks="all", transaction_flush_bytes=2048)
                x = px.xid(1, f"failover-{name}", "b")
                px.tpc_begin(x)
                for t in TOPICS:  # across 3 partitions of 2 topics: part journalled early, part with the prepare
                    for q in range(3):
                        px.send_batch(t, vals(f"{name}-{t}-{q}", 40), partition=q)
                px.tpc_prepare()
                branches[name] = (px, x)
            # a slave learns of new topics from the master's keep-alives (every second); a failover
            # before that is test_a_failover_right_after_the_first_transaction below
            wait_until(lambda: knows(b, ("__transactions",) + TOPICS), 30, "the slave to know the topics")
            a.kill()
            for px, _ in branches.values():
                px.close(1)
        promote(b)

        # the promoted slave lists both as prepared
        r = subprocess.run([sys.executable, "-m", "hpbroker", "tx", "list", "--json", "--broker", b.url],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        listed = {d["txid"]: d for d in map(json.loads, r.stdout.splitlines())}
        for name, (_, x) in branches.items():
            assert listed.get(x.txid, {}).get("state") == "prepared", (name, r.stdout, r.stderr)
            assert listed[x.txid]["messages"] == 2 * 3 * 40, listed[x.txid]
        assert set(listed) == {x.txid for _, x in branches.values()}, "the open local transaction survived"
        with Producer(b.url, acks="all") as q:
            assert sorted(q.tpc_recover()) == sorted(x for _, x in branches.values())
            # alone, a sync master takes no decision (acks=all): refused, and still prepared
            for name, resolve in (("keep", q.tpc_commit), ("drop", q.tpc_rollback)):
                with pytest.raises(BrokerError) as e:
                    resolve(branches[name][1])
                assert e.value.code == ErrorCode.NOT_ENOUGH_REPLICAS
            assert sorted(q.tpc_recover()) == sorted(x for _, x in branches.values())
            # the old master back as its slave: now it decides
            a = slave(tmp_path, "a", b, port=a.port, broker_id=1)
            wait_until(lambda: stats(b).get("slave_1_insync") == 1, 60, "the old master to rejoin in sync")
            q.tpc_commit(branches["keep"][1])
            q.tpc_rollback(branches["drop"][1])
            assert q.tpc_recover() == []
        committed += [v for t in TOPICS for k in range(3) for v in vals(f"keep-{t}-{k}", 40)]

        got = consume_all(b.url, len(committed))
        assert sorted(got) == sorted(committed)
    finally:
        a.stop()
        b.stop()


def test_a_failover_right_after_the_first_transaction(tmp_path):
    """The first transaction creates ``__transactions`` while the master's
    replicator is held (SIGSTOP), so neither a keep-alive nor an answer to
    the slave's question tells the slave of the new topic.  The slave's
    writers get the journal's batches but hold them until the slave knows
    the topic, so PREPARE is not acknowledged meanwhile; once the replicator
    runs again, it is, and the branch is on the slave after a failover."""
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 60, "the slave to be in sync")
        with Producer(a.url, acks="all") as p:
            p.send_batch(TOPICS[0], [b"before"], partition=0).result(30)
        wait_until(lambda: knows(b, TOPICS[:1]), 30, "the slave to know the data topic")
        replicator = a.child_pid("replicator")
        os.kill(replicator, signal.SIGSTOP)
        try:
            with Producer(a.url, acks="all") as p:
                x = p.xid(1, "first-ever", "b")
                p.tpc_begin(x)
                p.send_batch(TOPICS[0], vals("first", 10), partition=1)
                with ThreadPoolExecutor(1) as pool:
                    prepared = pool.submit(p.tpc_prepare)
                    time.sleep(3)
                    assert not prepared.done(), "PREPARE acknowledged before the slave knew __transactions"
                    os.kill(replicator, signal.SIGCONT)
                    try:
                        prepared.result(60)  # durable on the slave too
                    except BrokerError as e:  # the slave fell out of sync meanwhile: not acknowledged, retry
                        assert e.code == ErrorCode.NOT_ENOUGH_REPLICAS, e
                        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 60, "the slave to be in sync again")
                        p.tpc_prepare()
                a.kill()
        finally:
            if a.proc.poll() is None:
                os.kill(replicator, signal.SIGCONT)
        promote(b)
        with Producer(b.url, acks="all") as q:
            assert q.tpc_recover() == [x]
    finally:
        a.stop()
        b.stop()
