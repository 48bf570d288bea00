"""MetaQ's ``transaction`` verbs on the text port, against a real broker
(docs/protocol-text.md, "Transactions").

The MetaQ side is tests/metaq_client.py (MetaQ's wire format only); what
is visible is read back both through MetaQ's ``get`` and through the
ZeroMQ protocol.  One broker serves the module, with two acceptors, so a
transaction's requests must reach the acceptor that coordinates it; the
XA test kills it (-9) and starts it again.
"""

from __future__ import annotations

import socket
import time

import pytest
from metaq_client import MetaQClient, MetaQError, local_key, put_command, transaction_command, xa_key

from brokerproc import BrokerProcess, free_port
from rawclient import RawClient
from hpbroker.client.producer import Producer
from hpbroker.protocol import messages as m

CONFIG = """
[text_protocol]
idle_timeout_ms = 20000
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("texttx")
    (d / "broker.toml").write_text(CONFIG)
    port = free_port()
    b = BrokerProcess(d / "data", args=("--partitions", "2", "--acceptors", "2", "--config", str(d / "broker.toml"),
                                        "--text-port", str(port)))
    b.text_port = port
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mq(broker):
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        yield c


def visible(c: MetaQClient, topic: str, partitions=(0, 1)) -> list[tuple[int, int, bytes]]:
    """(partition, msgId, data) of every message a MetaQ consumer reads."""
    out = []
    for p in partitions:
        msgs, _ = c.consume(topic, "g", p, 0)
        out += [(p, x.msg_id, x.data) for x in msgs]
    return out


def zmq_values(broker, topic: str, partitions=(0, 1)) -> list[bytes]:
    raw = RawClient(broker.url)
    try:
        return [r.value for p in partitions for r in raw.fetch_all(topic, p)]
    finally:
        raw.close()


def open_txids(broker) -> set[str]:
    """Every transaction the broker's acceptors hold (any state)."""
    raw = RawClient(broker.url)
    try:
        eps = raw.call(m.Metadata(id=raw.next_id(), topics=[]))[0].acceptors
    finally:
        raw.close()
    out = set()
    for ep in eps:
        c = RawClient(ep)
        try:
            rep = c.call(m.TxList(id=c.next_id()))[0]
            assert rep.code == 0, rep
            out |= {t.txid for t in rep.transactions}
        finally:
            c.close()
    return out


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def error_of(call) -> MetaQError:
    with pytest.raises(MetaQError) as e:
        call()
    return e.value


# -- local transactions ----------------------------------------------------------------------------


def test_a_local_commit_makes_every_message_visible_at_once_with_the_msgids_its_puts_got(broker, mq):
    key = local_key("sess-a", 1)
    assert mq.transaction(key, "BEGIN", session="sess-a", timeout=30) == b""
    first = mq.put_tx(key, "ltx", 0, [b"a0", b"a1", b"a2"])
    second = mq.put_tx(key, "ltx", 1, [b"b0", b"b1"])
    assert all(off == -1 for _, _, off in first + second)  # MetaQ: not stored until the commit
    assert [p for _, p, _ in first + second] == [0, 0, 0, 1, 1]
    assert key in open_txids(broker)
    assert visible(mq, "ltx") == [] and zmq_values(broker, "ltx") == []
    assert mq.transaction(key, "COMMIT_ONE_PHASE", session="sess-a") == b""
    got = visible(mq, "ltx")
    assert got == [(0, i, v) for (i, _, _), v in zip(first, [b"a0", b"a1", b"a2"])] + \
                 [(1, i, v) for (i, _, _), v in zip(second, [b"b0", b"b1"])]
    assert zmq_values(broker, "ltx") == [b"a0", b"a1", b"a2", b"b0", b"b1"]
    assert key not in open_txids(broker)
    # the connection goes on, and its counters counted
    stats = {line[0]: line[1] for line in mq.stats("") if len(line) == 2}
    assert int(stats["tx_begin"]) >= 1 and int(stats["tx_commit"]) >= 1


def test_a_pipelined_begin_puts_commit_in_one_write_is_answered_in_order(broker):
    key = local_key("pipe", 7)
    with socket.create_connection(("127.0.0.1", broker.text_port), timeout=10) as s:
        s.sendall(transaction_command(key, "pipe", "BEGIN", 1)
                  + b"".join(put_command("ltxp", 1, b"p%d" % i, 2 + i, tx_key=key) for i in range(4))
                  + transaction_command(key, "pipe", "COMMIT_ONE_PHASE", 6) + b"version 7\r\n")
        c = MetaQClient.over(s)
        answers = [c.read_reply() for _ in range(7)]
        assert [(code, op) for _, code, op, _ in answers] == [(200, i) for i in range(1, 8)]
        assert [b.split(b" ")[1:] for *_, b in answers[1:5]] == [[b"1", b"-1"]] * 4
        assert [x.data for x in c.consume("ltxp", "g", 1, 0)[0]] == [b"p0", b"p1", b"p2", b"p3"]


def test_a_rolled_back_transaction_is_never_visible_and_is_gone(broker, mq):
    key = local_key("sess-r", 1)
    mq.transaction(key, "BEGIN", session="sess-r")
    mq.put_tx(key, "rtx", 0, [b"never-%d" % i for i in range(5)])
    assert mq.transaction(key, "ROLLBACK", session="sess-r") == b""
    mq.put("rtx", 0, b"plain")
    assert [d for *_, d in visible(mq, "rtx")] == [b"plain"]
    assert zmq_values(broker, "rtx") == [b"plain"]
    e = error_of(lambda: mq.transaction(key, "COMMIT_ONE_PHASE", session="sess-r"))
    assert e.code == 500 and e.message == f"Local transaction '{key}' has not been started."
    assert mq.version().startswith("hpbroker-")


def test_a_disconnected_clients_local_transaction_is_rolled_back_and_an_xa_branch_it_prepared_stays(broker):
    local, xa = local_key("gone", 1), xa_key(3, b"gtrid-gone", b"bq", "uq-gone")
    c = MetaQClient("127.0.0.1", broker.text_port)
    c.transaction(local, "BEGIN", session="gone", timeout=60)
    c.put_tx(local, "dtx", 0, [b"lost-1", b"lost-2"])
    c.transaction(xa, "BEGIN", session="gone", timeout=60, uq="uq-gone")
    c.put_tx(xa, "dtx", 1, [b"kept"])
    assert c.transaction(xa, "PREPARE", session="gone", uq="uq-gone") == b"0"  # XA_OK
    assert {local, xa} <= open_txids(broker)
    c.close()
    wait_for(lambda: local not in open_txids(broker), what="the listener's rollback of the local transaction")
    assert xa in open_txids(broker)
    with MetaQClient("127.0.0.1", broker.text_port) as d:
        assert visible(d, "dtx") == []
        assert d.transaction("null", "RECOVER", session="other", uq="uq-gone").decode().split("\r\n") == [xa]
        assert d.transaction(xa, "COMMIT_TWO_PHASE", session="other", uq="uq-gone") == b""
        assert [data for *_, data in visible(d, "dtx")] == [b"kept"]


def test_a_local_transaction_past_its_timeout_is_rolled_back_and_its_commit_says_so(broker, mq):
    key = local_key("slow", 1)
    mq.transaction(key, "BEGIN", session="slow", timeout=1)  # MetaQ's seconds
    mq.put_tx(key, "ttx", 0, [b"too-late"])
    wait_for(lambda: key not in open_txids(broker), what="the broker's timeout")
    e = error_of(lambda: mq.transaction(key, "COMMIT_ONE_PHASE", session="slow"))
    assert e.code == 500 and e.message.startswith("XAException:code=106,msg=")  # XA_RBTIMEOUT
    assert visible(mq, "ttx") == []
    e = error_of(lambda: mq.transaction(key, "ROLLBACK", session="slow"))  # forgotten by the listener too
    assert e.message == f"Local transaction '{key}' has not been started."


def test_a_local_transaction_belongs_to_its_connection(broker, mq):
    key = local_key("mine", 1)
    mq.transaction(key, "BEGIN", session="mine")
    mq.transaction(key, "BEGIN", session="mine")  # again on the same connection: a no-op, as MetaQ
    with MetaQClient("127.0.0.1", broker.text_port) as other:
        e = error_of(lambda: other.put_tx(key, "otx", 0, [b"intruder"]))
        assert e.code == 500 and "has not been started" in e.message
        e = error_of(lambda: other.transaction(key, "COMMIT_ONE_PHASE", session="mine"))
        assert "has not been started" in e.message
    mq.put_tx(key, "otx", 0, [b"owner"])
    mq.transaction(key, "COMMIT_TWO_PHASE", session="mine")  # a local transaction commits either way
    assert [d for *_, d in visible(mq, "otx")] == [b"owner"]


# -- XA ------------------------------------------------------------------------------------------


def test_xa_prepare_survives_kill_9_recover_lists_it_and_commit_two_phase_makes_it_visible(broker):
    uq = "rm-1"
    keys = [xa_key(1, b"order-%d" % i, b"branch-1", uq) for i in range(3)]
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        sent = {}
        for i, key in enumerate(keys):
            assert c.transaction(key, "BEGIN", timeout=60, uq=uq) == b""
            sent[key] = c.put_tx(key, "xtx", i % 2, [b"x%d-%d" % (i, k) for k in range(3)])
            assert c.transaction(key, "END", uq=uq) is None  # one way: no answer
            assert c.transaction(key, "PREPARE", uq=uq) == b"0"
        other = xa_key(1, b"other", b"b", "rm-2")
        c.transaction(other, "BEGIN", uq="rm-2")
        c.put_tx(other, "xtx", 0, [b"other"])
        assert c.transaction(other, "PREPARE", uq="rm-2") == b"0"
        assert visible(c, "xtx") == []
    broker.kill()  # -9, every process
    broker.start()
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        assert sorted(c.transaction("null", "RECOVER", uq=uq).decode().split("\r\n")) == sorted(keys)
        assert c.transaction("null", "RECOVER", uq="rm-2").decode() == other
        assert set(c.transaction("null", "RECOVER").decode().split("\r\n")) == {*keys, other}  # no qualifier: all
        assert visible(c, "xtx") == []
        for key in keys[:2]:
            assert c.transaction(key, "COMMIT_TWO_PHASE", uq=uq) == b""
        assert c.transaction(keys[2], "ROLLBACK", uq=uq) == b""
        assert c.transaction(other, "ROLLBACK", uq="rm-2") == b""
        assert c.transaction("null", "RECOVER").decode() == ""
        got = visible(c, "xtx")
        want = [(i % 2, msg_id, b"x%d-%d" % (i, k)) for i, key in enumerate(keys[:2])
                for k, (msg_id, _, _) in enumerate(sent[key])]
        assert sorted(got) == sorted(want)  # the msgIds the puts were told, kept through the crash
        # a second commit of a finished branch: its outcome (a retry), not a second append
        assert c.transaction(keys[0], "COMMIT_TWO_PHASE", uq=uq) == b""
        assert len(visible(c, "xtx")) == 6


def test_xa_one_phase_readonly_prepare_and_protocol_errors(broker, mq):
    empty = xa_key(2, b"empty", b"b", "rm")
    mq.transaction(empty, "BEGIN", uq="rm")
    assert mq.transaction(empty, "PREPARE", uq="rm") == b"3"  # XA_RDONLY: nothing joined, and it is finished
    assert empty not in open_txids(broker)
    key = xa_key(2, b"one-phase", b"b", "rm")
    mq.transaction(key, "BEGIN", uq="rm")
    mq.put_tx(key, "x1tx", 0, [b"1p"])
    e = error_of(lambda: mq.transaction(key, "COMMIT_TWO_PHASE", uq="rm"))  # not prepared
    assert e.code == 500 and e.message.startswith("XAException:code=-6,msg=")  # XAER_PROTO
    assert mq.transaction(key, "COMMIT_ONE_PHASE", uq="rm") == b""
    assert [d for *_, d in visible(mq, "x1tx")] == [b"1p"]
    e = error_of(lambda: mq.transaction(key, "ROLLBACK", uq="rm"))  # committed already: heuristic-commit
    assert e.message.startswith("XAException:code=7,msg=")  # XA_HEURCOM


def test_a_branch_a_zeromq_producer_prepared_is_resolved_over_the_text_port(broker, mq):
    with Producer(broker.url) as p:
        xid = p.xid(9, "zmq-g", "zmq-b")
        p.tpc_begin(xid)
        p.send("ztx", b"from-zeromq", partition=1)
        p.tpc_prepare()
    key = xa_key(9, b"zmq-g", b"zmq-b")  # hpbroker's XID form: no qualifier
    assert key in mq.transaction("null", "RECOVER").decode().split("\r\n")
    assert key not in mq.transaction("null", "RECOVER", uq="rm").decode().split("\r\n")
    assert mq.transaction(key, "COMMIT_TWO_PHASE") == b""
    assert [d for *_, d in visible(mq, "ztx")] == [b"from-zeromq"]


# -- bad input --------------------------------------------------------------------------------------


def test_bad_transaction_input_gets_metaqs_errors_and_the_connection_goes_on(broker, mq):
    cases = [
        (b"transaction TX:s:1 s FROBNICATE 1\r\n", 400, "unknown transaction type"),
        (transaction_command("TX:s", "s", "BEGIN", 2), 400, "Illegal transaction key:TX:s"),
        (transaction_command("XID:1:zz:00:q", "s", "BEGIN", 3), 400, "Illegal transaction key"),
        (transaction_command("BOGUS:1", "s", "COMMIT_ONE_PHASE", 4), 400, "Illegal transaction key"),
        (transaction_command("TX:s:99", "s", "COMMIT_ONE_PHASE", 5), 500,
         "Local transaction 'TX:s:99' has not been started."),
        (transaction_command(xa_key(1, b"nope", b"b", "q"), "s", "COMMIT_TWO_PHASE", 6, uq="q"), 500,
         "XAException:code=-4,msg=XA transaction 'XID:1:6e6f7065:62:q' has not been started."),
        (transaction_command(xa_key(1, b"nope", b"b", "q"), "s", "ROLLBACK", 7, uq="q"), 500, "XAException:code=-4"),
        (transaction_command("TX:s:98", "s", "FORGET", 8), 500, "XAException:code=-4,msg=TX:s:98 is not a valid xid"),
        (transaction_command(xa_key(1, b"unknown", b"b", "q"), "s", "FORGET", 9, uq="q"), 200, ""),
        (put_command("btx", 0, b"v", 10, tx_key="TX:s:97"), 500, "Local transaction 'TX:s:97' has not been started."),
        (put_command("btx", 0, b"v", 11, tx_key="XID:1"), 400, "Illegal transaction key"),
    ]
    with socket.create_connection(("127.0.0.1", broker.text_port), timeout=10) as s:
        s.sendall(b"".join(c for c, _, _ in cases) + b"version 12\r\n")
        c = MetaQClient.over(s)
        answers = [c.read_reply() for _ in range(len(cases) + 1)]
    assert [(code, op) for _, code, op, _ in answers] == [(code, i + 1) for i, (_, code, _) in enumerate(cases)] + \
                                                         [(200, 12)]
    for (_, _, text), (*_, body) in zip(cases, answers):
        assert text in body.decode(), (text, body)
    # prepare of a local transaction, and a put inside one without a partition, on a live transaction
    key = local_key("bad", 1)
    mq.transaction(key, "BEGIN", session="bad")
    e = error_of(lambda: mq.transaction(key, "PREPARE", session="bad"))
    assert e.message == "XAException:code=-3,msg=Prepare not implemented on Local Transactions."
    e = error_of(lambda: mq.put_tx(key, "btx", -1, [b"anywhere"]))
    assert e.code == 500 and e.message == "Invalid partition for transaction command:-1"
    mq.put_tx(key, "btx", 1, [b"ok"])
    mq.transaction(key, "COMMIT_ONE_PHASE", session="bad")
    assert [d for *_, d in visible(mq, "btx")] == [b"ok"]


def test_listener_processes_that_did_not_begin_a_branch_find_its_coordinator(tmp_path):
    """Two listener processes on the port, two acceptors: branches begun
    over one connection are prepared and committed over others, served by
    either process (one learns the journal exists only then)."""
    port = free_port()
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "2", "--acceptors", "2", "--text-port", str(port),
                                               "--text-processes", "2"))
    b.start()
    clients = []
    try:
        clients = [MetaQClient("127.0.0.1", port) for _ in range(10)]  # the kernel spreads them over both
        pids = [{line[0]: line[1] for line in c.stats("") if len(line) == 2}["text_listener_pid"] for c in clients]
        assert len(set(pids)) == 2
        keys = [xa_key(5, b"spread-%d" % i, b"b", "rm") for i in range(len(clients))]
        first = clients[0]
        for i, key in enumerate(keys):
            first.transaction(key, "BEGIN", uq="rm")
            first.put_tx(key, "ptx", i % 2, [b"v%d" % i])
        for i, key in enumerate(keys):
            other = clients[1 + i % (len(clients) - 1)]
            assert other.transaction(key, "PREPARE", uq="rm") == b"0"
        listed = [set(c.transaction("null", "RECOVER", uq="rm").decode().split("\r\n")) for c in clients]
        assert all(got == set(keys) for got in listed)
        for i, key in enumerate(keys):
            assert clients[-1 - i % (len(clients) - 1)].transaction(key, "COMMIT_TWO_PHASE", uq="rm") == b""
        assert sorted(d for *_, d in visible(first, "ptx")) == sorted(b"v%d" % i for i in range(len(keys)))
    finally:
        for c in clients:
            c.close()
        b.stop()
