"""Transactions, sans-IO: the journal's record format and the table's rules."""

from __future__ import annotations

import pytest

from hpbroker import batch
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.tx import journal
from hpbroker.tx.table import COMMITTED, COMMITTING, OPEN, PREPARED, ROLLED_BACK, Finished, TxTable
from hpbroker.client.xa import Xid, make_xid


def table(**kw) -> TxTable:
    args = dict(max_timeout_ms=10_000, max_transaction_bytes=1000, max_open_bytes=1500, max_open_transactions=3,
                remember=2)
    args.update(kw)
    return TxTable(**args)


def test_journal_records_round_trip_with_their_offsets():
    b = bytes(batch.encode_batch([b"v1", b"v2"], timestamp_ms=5))
    data = journal.encode("TX:s:1", [journal.data("t", 3, b), journal.prepare(),
                                     journal.commit(True, [("t", 3, 17)]), journal.rollback(False, "why"),
                                     journal.applied()], 1000)
    # as the writer would stamp it
    data[0:8] = (40).to_bytes(8, "little")
    got = list(journal.decode(data))
    assert [(e.offset, e.txid, e.kind) for e in got] == [(40, "TX:s:1", journal.DATA), (41, "TX:s:1", journal.PREPARE),
                                                        (42, "TX:s:1", journal.COMMIT), (43, "TX:s:1", journal.ROLLBACK),
                                                        (44, "TX:s:1", journal.APPLIED)]
    assert got[0].body == ["t", 3, b]
    assert got[2].body == [True, [["t", 3, 17]]]
    assert got[3].body == [False, "why"]
    assert journal.last_offset(data) == 45


def test_journal_skips_records_that_are_not_its_own():
    foreign = batch.encode_batch([b"not msgpack \xc1", b"\x93\x09\x01\x02"], [b"k", b"k"], timestamp_ms=1)
    keyless = batch.encode_batch([journal.prepare()], timestamp_ms=1)
    assert list(journal.decode(bytes(foreign) + bytes(keyless))) == []


def test_partition_for_spreads_and_is_stable():
    ps = {journal.partition_for(f"TX:a:{i}", 8) for i in range(200)}
    assert ps == set(range(8))
    assert journal.partition_for("XID:1:61:62", 8) == journal.partition_for("XID:1:61:62", 8)


def test_begin_twice_too_many_and_too_long_are_refused():
    t = table()
    t.begin("a", False, 60_000, 0.0)
    with pytest.raises(BrokerError) as e:
        t.begin("a", False, 1, 0.0)
    assert e.value.code == ErrorCode.INVALID_TXN_STATE
    with pytest.raises(BrokerError) as e:
        t.begin("x" * 301, False, 1, 0.0)
    assert e.value.code == ErrorCode.INVALID_TXID
    t.begin("b", False, 1, 0.0)
    t.begin("c", False, 1, 0.0)
    with pytest.raises(BrokerError) as e:
        t.begin("d", False, 1, 0.0)
    assert e.value.code == ErrorCode.BUSY


def test_the_timeout_is_capped_and_only_open_transactions_expire():
    t = table()
    a, ms = t.begin("a", True, 60_000, 0.0)
    assert ms == 10_000
    b, _ = t.begin("b", True, 1_000, 0.0)
    b.state, b.deadline = PREPARED, None
    assert t.expired(5.0) == []
    assert t.expired(10.0) == [a]


def test_size_caps_per_transaction_and_per_coordinator():
    t = table()
    a, _ = t.begin("a", False, 1000, 0.0)
    t.check_add(a, 1000)
    with pytest.raises(BrokerError) as e:
        t.check_add(a, 1001)
    assert e.value.code == ErrorCode.TRANSACTION_TOO_LARGE
    t.add(a, "t", 0, b"x" * 900, 1)
    b, _ = t.begin("b", False, 1000, 0.0)
    t.check_add(b, 600)
    with pytest.raises(BrokerError) as e:
        t.check_add(b, 601)  # 900 + 601 > max_open_bytes
    assert e.value.code == ErrorCode.TRANSACTION_TOO_LARGE
    a.state = PREPARED
    with pytest.raises(BrokerError) as e:
        t.check_add(a, 1)
    assert e.value.code == ErrorCode.INVALID_TXN_STATE


def test_finished_outcomes_are_remembered_for_the_last_few():
    t = table()
    for name, outcome in (("a", COMMITTED), ("b", ROLLED_BACK), ("c", COMMITTED)):
        tx, _ = t.begin(name, False, 1000, 0.0)
        t.add(tx, "t", 0, b"12345", 1)
        t.finish(tx, outcome)
    assert t.bytes == 0 and len(t) == 0
    with pytest.raises(Finished) as e:
        t.find("c")
    assert e.value.outcome == COMMITTED and e.value.code == ErrorCode.INVALID_TXN_STATE
    with pytest.raises(Finished) as e:
        t.find("b")
    assert e.value.outcome == ROLLED_BACK
    with pytest.raises(BrokerError) as e:
        t.find("a")  # remember=2: forgotten
    assert e.value.code == ErrorCode.UNKNOWN_TRANSACTION


def test_a_disconnect_finds_only_open_local_transactions_of_that_connection():
    t = table()
    a, _ = t.begin("a", False, 1000, 0.0, conn=7)
    b, _ = t.begin("b", True, 1000, 0.0, conn=7)  # XA: the coordinator decides, not the connection
    c, _ = t.begin("c", False, 1000, 0.0, conn=8)
    assert t.of_connection(7) == [a]
    a.state = PREPARED
    assert t.of_connection(7) == []
    assert b.state == OPEN and c.conn == 8


def test_xid_round_trips_as_a_metaq_key_and_checks_xa_limits():
    x = make_xid(7, "global-1", "branch:a")
    assert x.txid == "XID:7:" + b"global-1".hex() + ":" + b"branch:a".hex()
    assert Xid.from_txid(x.txid) == x
    assert Xid.from_txid("TX:abc:1") is None
    with pytest.raises(ValueError):
        make_xid(1, "g" * 65, "b")
    with pytest.raises(ValueError):
        make_xid(-1, "g", "b")
    with pytest.raises(TypeError):
        make_xid(1, b"g", "b")


# -- recovery, from journal bytes (no broker: a stand-in for the fetch service) --------------

class _Reader:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, max_bytes: int, end: int) -> bytes:
        return self.data if offset < min(end, journal.last_offset(self.data)) else b""


class _Fetch:
    def __init__(self, journal_bytes: bytes, end: int, partitions: dict):
        self.hwm = {"__transactions/0": end}
        self.log_start = {}
        self.readers = {("__transactions", 0): _Reader(journal_bytes)}
        for (t, p), data in partitions.items():
            self.hwm[f"{t}/{p}"] = journal.last_offset(data)
            self.readers[(t, p)] = _Reader(data)

    def reader(self, topic, p):
        return self.readers.get((topic, p), _Reader(b""))


class _Svc:
    def __init__(self, records: list[tuple[str, list[bytes]]], partitions: dict | None = None, tmp=None):
        data, at = bytearray(), 0
        for txid, values in records:
            b = journal.encode(txid, values, 1000)
            b[0:8] = at.to_bytes(8, "little")
            at += len(values)
            data += b
        self.table = table(max_open_transactions=100, max_transaction_bytes=1 << 20, max_open_bytes=1 << 20)
        self.fetch = _Fetch(bytes(data), at, partitions or {})
        self.clock = lambda: 0.0
        self.cfg = type("C", (), {"broker": type("B", (), {"data_dir": str(tmp)})})()
        self.writes, self.applied = [], []

    def _write(self, p, tx, values, acks, then):
        self.writes.append((tx.txid, [list(journal.decode(journal.encode(tx.txid, values, 0)))[0].kind], acks))

    def apply(self, tx):
        self.applied.append((tx.txid, {tp: [b for i, b in enumerate(bs) if i not in tx.done.get(tp, ())]
                                       for tp, bs in tx.parts.items()}))


def _b(*values: bytes, ts: int = 7) -> bytes:
    return bytes(batch.encode_batch(list(values), timestamp_ms=ts))


def test_recovery_rolls_back_open_keeps_prepared_and_reapplies_only_missing_batches(tmp_path):
    from hpbroker.net.tx_recovery import recover

    b1, b2, b3 = _b(b"one"), _b(b"two"), _b(b"three")
    # the partition holds b1 as the commit (journal offset 10) appended it, not b2; and a
    # byte-identical copy of b2 from another producer, which must not stand in for it
    present = bytearray(journal.mark_batch(b1, journal.mark_of(0, 10), 0)) + bytearray(b2)
    present[0:8] = (5).to_bytes(8, "little")
    off = len(present) - len(b2)
    present[off:off + 8] = (6).to_bytes(8, "little")
    svc = _Svc([
        ("open", [journal.data("t", 0, _b(b"x"))]),
        ("prep", [journal.data("t", 1, b3), journal.prepare()]),
        ("done", [journal.data("t", 0, _b(b"y")), journal.commit(False, [("t", 0, 0)])]),
        ("done", [journal.applied()]),
        ("gone", [journal.data("t", 0, _b(b"z")), journal.rollback(False, "no")]),
        ("crash", [journal.data("t", 0, b1), journal.data("t", 0, b2), journal.commit(False, [("t", 0, 5)])]),
    ], {("t", 0): bytes(present)}, tmp_path)
    recover(svc, 0)
    assert set(svc.table.txs) == {"prep", "crash"}
    assert svc.table.txs["crash"].state == COMMITTING  # being appended again (apply() is the stand-in's)...
    assert svc.table.txs["prep"].state == PREPARED and svc.table.txs["prep"].parts == {("t", 1): [b3]}
    assert svc.applied == [("crash", {("t", 0): [b2]})]  # ...with only the batch its partition lacks
    assert svc.writes == [("open", [journal.ROLLBACK], 1)]
    with pytest.raises(Finished) as e:
        svc.table.find("open")
    assert e.value.outcome == ROLLED_BACK


def test_a_restated_or_copied_transaction_is_its_last_whole_copy(tmp_path):
    from hpbroker.net.tx_recovery import recover

    old, new1, new2 = _b(b"old"), _b(b"new-1"), _b(b"new-2")
    svc = _Svc([
        # a decision's write failed after DATA(old): the retry restated it with two batches
        ("r", [journal.data("t", 0, old)]),
        ("r", [journal.copy(), journal.data("t", 0, new1), journal.data("t", 0, new2), journal.prepare()]),
        # a prepared one copied forward, then a copy cut short by a crash (no COPIED)
        ("c", [journal.data("t", 1, old), journal.prepare()]),
        ("c", [journal.copy(), journal.data("t", 1, new1), journal.copied("prepared", False, [])]),
        ("c", [journal.copy(), journal.data("t", 1, new2)]),
    ], tmp=tmp_path)
    recover(svc, 0)
    assert svc.table.txs["r"].state == PREPARED and svc.table.txs["r"].parts == {("t", 0): [new1, new2]}
    assert svc.table.txs["c"].state == PREPARED and svc.table.txs["c"].parts == {("t", 1): [new1]}
    assert svc.table.bytes == 3 * len(new1)


def test_connections_on_one_fd_are_told_apart_by_the_accepts_before_them():
    import zmq

    from hpbroker.net.connections import Connections

    c = Connections()
    assert c.on_event(zmq.EVENT_ACCEPTED, 9) is None
    old = c.of(9)  # a request over the first connection on fd 9
    # it closes and a new connection gets fd 9: the monitor has DISCONNECTED, then ACCEPTED
    assert c.on_event(zmq.EVENT_DISCONNECTED, 9) == old
    c.on_event(zmq.EVENT_ACCEPTED, 9)
    new = c.of(9)
    assert new != old
    # a transaction begun over the new connection is not the old one's
    t = table()
    tx, _ = t.begin("n", False, 1000, 0.0, conn=new)
    assert t.of_connection(old) == [] and t.of_connection(new) == [tx]
    assert c.on_event(zmq.EVENT_DISCONNECTED, 9) == new
    assert c.on_event(zmq.EVENT_CONNECTED, 11) is None and c.of(11) == (11, 0)  # other events change nothing
