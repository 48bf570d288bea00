"""Transactions against a real broker: visibility, rollback, timeouts,
disconnects, bad input and the operator's ``hpbroker tx``.

(Crash recovery, XA with PostgreSQL and failover have their own files:
test_tx_crash.py, test_tx_xa_postgres.py, test_tx_replication.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from brokerproc import BrokerProcess
from rawclient import RawClient
from hpbroker.client.producer import Producer
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def broker(tmp_path):
    cfg = tmp_path / "hpbroker.toml"
    cfg.write_text("[transactions]\nmax_transaction_bytes = 200000\n")
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "3", "--acceptors", "2", "--config", str(cfg))).start()
    yield b
    b.stop()


def ends(raw: RawClient, topic: str, partitions=range(3)) -> list[int]:
    return [raw.call(m.ListOffsets(id=raw.next_id(), topic=topic, partition=p, spec=m.LATEST))[0].offset
            for p in partitions]


def values(raw: RawClient, topic: str, partitions=range(3)) -> list[bytes]:
    return sorted(r.value for p in partitions for r in raw.fetch_all(topic, p))


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def tx_list(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpbroker", "tx", "list", "--broker", url, *extra],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_nothing_is_visible_before_the_commit_and_each_partition_gets_all_of_it_at_once(broker):
    raw = RawClient(broker.url)
    with Producer(broker.url, acks="all", transaction_flush_bytes=2000) as p:
        assert p.partitions_for("orders") == p.partitions_for("audit") == {0, 1, 2}  # created, and known here
        tx = p.transaction()
        for i in range(60):  # flushes several TxProduce requests before the commit
            tx.send("orders", b"order-%03d" % i, partition=i % 3)
        tx.send_batch("audit", [b"audit-%d" % i for i in range(5)], partition=1)
        assert ends(raw, "orders") == [0, 0, 0] and ends(raw, "audit") == [0, 0, 0]
        assert values(raw, "orders") == []
        seen: list[list[int]] = []
        stop = threading.Event()

        def watch():  # every snapshot of the ends while the commit runs
            w = RawClient(broker.url)
            while not stop.is_set():
                seen.append(ends(w, "orders") + ends(w, "audit"))
            w.close()

        t = threading.Thread(target=watch)
        t.start()
        time.sleep(0.2)
        tx.commit()
        time.sleep(0.2)
        stop.set()
        t.join()
        assert ends(raw, "orders") == [20, 20, 20] and ends(raw, "audit") == [0, 5, 0]
        assert values(raw, "orders") == sorted(b"order-%03d" % i for i in range(60))
        assert values(raw, "audit") == sorted(b"audit-%d" % i for i in range(5))
        for snap in seen:  # a partition shows none of its share, or all of it
            assert all(v in (0, 20) for v in snap[:3]), snap
            assert snap[4] in (0, 5), snap
        assert seen[0] == [0] * 6 and seen[-1] == [20, 20, 20, 0, 5, 0]
    raw.close()


def test_rolled_back_messages_never_appear_and_offsets_stay_contiguous(broker):
    raw = RawClient(broker.url)
    with Producer(broker.url, acks="all", transaction_flush_bytes=500) as p:
        p.partitions_for("t")
        with p.transaction() as tx:
            tx.send_batch("t", [b"first"], partition=0)
        with pytest.raises(RuntimeError):
            with p.transaction() as tx:
                for i in range(50):
                    tx.send("t", b"doomed-%d" % i, partition=0)  # journalled (flush_bytes 500), then rolled back
                raise RuntimeError("the block failed")
        tx = p.transaction()
        tx.send("t", b"also-doomed", partition=0)
        tx.flush()
        tx.rollback()
        with p.transaction() as tx:
            tx.send_batch("t", [b"second", b"third"], partition=0)
    recs = raw.fetch_all("t", 0)
    assert [(r.offset, r.value) for r in recs] == [(0, b"first"), (1, b"second"), (2, b"third")]
    out = tx_list(broker.url)
    assert out.returncode == 0 and "TX:" not in out.stdout, out.stdout
    raw.close()


def test_a_timed_out_transaction_is_rolled_back_and_says_so(broker):
    raw = RawClient(broker.url)
    with Producer(broker.url) as p:
        p.partitions_for("t")
        tx = p.transaction(timeout_ms=300)
        tx.send("t", b"late", partition=0)
        tx.flush()
        time.sleep(1.0)
        with pytest.raises(BrokerError) as e:
            tx.commit()
        assert e.value.code == ErrorCode.TRANSACTION_TIMED_OUT
    assert values(raw, "t") == []
    raw.close()


CLIENT = """
import sys, time
from hpbroker.client.producer import Producer
p = Producer(sys.argv[1])
if sys.argv[2] == "local":
    tx = p.transaction(timeout_ms=600000)
    tx.send("t", b"orphan", partition=0)
    tx.flush()
else:
    p.transaction_timeout_ms = 300
    p.tpc_begin(p.xid(1, "gtrid-%s" % sys.argv[3], "bq"))
    p.send("t", b"in-doubt", partition=1)
    p.tpc_prepare()
print("ready", flush=True)
time.sleep(600)
"""


def _client(url: str, kind: str, tag: str = "") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, url, kind, tag], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_local_transaction_is_rolled_back_when_its_client_dies_and_a_prepared_one_survives_that(broker):
    raw = RawClient(broker.url)
    local = _client(broker.url, "local")
    xa = _client(broker.url, "xa", "a")
    listed = tx_list(broker.url)
    assert listed.returncode == 0
    assert "open" in listed.stdout and "prepared" in listed.stdout, listed.stdout
    for proc in (local, xa):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_for(lambda: "open" not in tx_list(broker.url, "--state", "open").stdout.split("\n", 1)[1],
             what="the orphaned local transaction's rollback")
    time.sleep(0.6)  # past the XA branch's 300 ms timeout: prepared, so it stays
    with Producer(broker.url) as p:
        recovered = p.tpc_recover()
        assert recovered == [p.xid(1, "gtrid-a", "bq")]
        assert values(raw, "t") == []
        p.tpc_commit(recovered[0])
        assert p.tpc_recover() == []
    assert values(raw, "t") == [b"in-doubt"]
    raw.close()


def test_a_prepared_branch_survives_a_restart_and_an_operator_resolves_it(tmp_path, broker):
    xa = _client(broker.url, "xa", "b")
    xa.send_signal(signal.SIGKILL)
    xa.wait()
    broker.stop()
    broker.start()
    out = tx_list(broker.url, "--json")
    assert out.returncode == 0
    assert '"state": "prepared"' in out.stdout and '"xa": true' in out.stdout, out.stdout
    txid = "XID:1:" + b"gtrid-b".hex() + ":" + b"bq".hex()
    assert txid in out.stdout
    rb = subprocess.run([sys.executable, "-m", "hpbroker", "tx", "rollback", txid, "--broker", broker.url],
                        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert rb.returncode == 0 and "rolled back" in rb.stdout, rb.stdout + rb.stderr
    again = subprocess.run([sys.executable, "-m", "hpbroker", "tx", "commit", txid, "--broker", broker.url],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "INVALID_TXN_STATE" in again.stderr and "rolled back" in again.stderr
    unknown = subprocess.run([sys.executable, "-m", "hpbroker", "tx", "commit", "TX:nope:1", "--broker", broker.url],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert unknown.returncode == 1 and "UNKNOWN_TRANSACTION" in unknown.stderr
    assert "heuristic rollback" in broker.log()
    raw = RawClient(broker.url)
    assert values(raw, "t") == []
    raw.close()


def test_bad_requests_get_their_codes_and_the_broker_serves_on(broker):
    raw = RawClient(broker.url)
    with Producer(broker.url) as p:
        # an XID too long for XA, and a txid too long for the broker
        with pytest.raises(ValueError):
            p.xid(1, "g" * 65, "b")
        acceptors = raw.call(m.Metadata(id=raw.next_id(), topics=[]))[0].acceptors
        for ep in acceptors:
            r = RawClient(ep)
            rep, _ = r.call(m.TxBegin(id=r.next_id(), txid="T" * 301))
            assert rep.code in (ErrorCode.INVALID_TXID, ErrorCode.NOT_COORDINATOR)
            rep, _ = r.call(m.TxEnd(id=r.next_id(), txid="TX:never:1", action="commit"))
            assert rep.code in (ErrorCode.UNKNOWN_TRANSACTION, ErrorCode.NOT_COORDINATOR)
            r.close()
        # a second tpc_begin, a send after prepare, a local prepare
        p.tpc_begin(p.xid(2, "g", "b"))
        with pytest.raises(BrokerError) as e:
            p.tpc_begin(p.xid(2, "g", "c"))
        assert e.value.code == ErrorCode.INVALID_TXN_STATE
        p.send("t", b"x", partition=0)
        p.tpc_prepare()
        with pytest.raises(BrokerError) as e:
            p.send("t", b"after prepare", partition=0)
        assert e.value.code == ErrorCode.INVALID_TXN_STATE
        p.tpc_rollback()
        tx = p.transaction()
        with pytest.raises(BrokerError) as e:
            tx.prepare()
        assert e.value.code == ErrorCode.INVALID_TXN_STATE
        tx.rollback()
        # the same XID begun twice on the broker (two producers)
        p.tpc_begin(p.xid(3, "g", "b"))
        with Producer(broker.url) as q:
            with pytest.raises(BrokerError) as e:
                q.tpc_begin(q.xid(3, "g", "b"))
            assert e.value.code == ErrorCode.INVALID_TXN_STATE
        p.tpc_rollback()
        # past the broker's size cap (200 000 bytes): refused and rolled back
        tx = p.transaction()
        with pytest.raises(BrokerError) as e:
            for i in range(300):
                tx.send("t", b"z" * 1000, partition=2)
            tx.commit()
        assert e.value.code == ErrorCode.TRANSACTION_TOO_LARGE
        assert tx.state == "rolled_back"
        # a two-phase commit of an unprepared branch
        p.tpc_begin(p.xid(4, "g", "b"))
        p.send("t", b"y", partition=0)
        raw_ch = p._channel()
        with pytest.raises(BrokerError) as e:
            raw_ch.call(p._xa.endpoint, m.TxEnd(id=raw_ch.t.next_id(), txid=p._xa.txid, action="commit"))
        assert e.value.code == ErrorCode.INVALID_TXN_STATE
        p.tpc_commit()  # one phase
        # and ordinary traffic still works
        p.send("t", b"plain", partition=0).get(timeout=30)
    assert sorted(values(raw, "t")) == [b"plain", b"y"]
    raw.close()


def test_a_prepared_branch_outlives_the_journals_retention_by_being_copied_forward(tmp_path):
    cfg = tmp_path / "hpbroker.toml"
    cfg.write_text("[log]\nsegment_bytes = 65536\nretention_ms = 6000\nretention_check_ms = 300\ndelete_delay_ms = 0\n"
                   "[transactions]\nlog_partitions = 1\nmax_timeout_ms = 2000\n")
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "1", "--config", str(cfg))).start()
    try:
        raw = RawClient(b.url)
        with Producer(b.url, acks="all") as p:
            p.tpc_begin(p.xid(9, "long-wait", "b"))
            p.send_batch("t", [b"kept-%d" % i for i in range(20)], partition=0)
            p.tpc_prepare()
            p._xa = None  # its coordinator "goes away" (tpc_recover and tpc_commit(xid) resolve it later)

            def journal_start() -> int:
                rep, _ = raw.call(m.ListOffsets(id=raw.next_id(), topic="__transactions", partition=0,
                                                spec=m.EARLIEST))
                return rep.offset

            filler = b"f" * 1000
            deadline = time.monotonic() + 60
            while journal_start() == 0:  # the branch's first records expire only after it was copied
                assert time.monotonic() < deadline, "the journal never expired a segment"
                with p.transaction() as tx:
                    tx.send_batch("other", [filler] * 20, partition=0)
                time.sleep(0.05)
        stats = subprocess.run([sys.executable, "-m", "hpbroker", "stats", "--broker", b.url, "--json"],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert '"transaction_journal_copies": 0' not in stats.stdout, stats.stdout
        b.kill()
        b.start()
        with Producer(b.url) as p:
            assert p.tpc_recover() == [p.xid(9, "long-wait", "b")]
            p.tpc_commit(p.xid(9, "long-wait", "b"))
        assert [r.value for r in raw.fetch_all("t", 0)] == [b"kept-%d" % i for i in range(20)]
        raw.close()
    finally:
        b.stop()


def test_a_closed_connections_late_disconnect_never_rolls_back_the_next_connection_on_its_fd(tmp_path):
    """A connection closes and the next one gets its fd number, often before
    the acceptor has read the first one's EVENT_DISCONNECTED: the local
    transaction the new connection begins must survive that event
    (net/connections.py tells the two apart by counting EVENT_ACCEPTED)."""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "1", "--acceptors", "1")).start()
    stop = threading.Event()

    def load():  # keeps the acceptor's reads of client requests long, where a close is seen late
        raw = RawClient(b.url)
        inflight = 0
        while not stop.is_set():
            while inflight < 64:
                raw.send_frames(codec.encode_request(m.Metadata(id=raw.next_id(), topics=[])))
                inflight += 1
            raw.recv()
            inflight -= 1
        raw.close()

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        rolled_back = []
        for i in range(300):
            first = RawClient(b.url)
            first.call(m.Metadata(id=first.next_id(), topics=[]))
            first.close()  # its fd is free now; the acceptor may not have seen it go
            second = RawClient(b.url)
            txid = f"TX:fd-reuse:{i}"
            rep, _ = second.call(m.TxBegin(id=second.next_id(), txid=txid, xa=False, timeout_ms=60_000))
            assert rep.code == 0, rep
            rep, _ = second.call(m.TxEnd(id=second.next_id(), txid=txid, action="commit", parts=[]))
            if rep.code:
                rolled_back.append((i, rep.code, rep.message))
            second.close()
        assert rolled_back == [], f"{len(rolled_back)} of 300 rolled back by another connection's close: {rolled_back[:3]}"
        assert "rolled back, its client disconnected" not in b.log()
    finally:
        stop.set()
        loader.join(10)
        b.stop()
