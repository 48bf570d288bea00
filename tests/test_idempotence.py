"""Idempotent producers: sequence checks on the broker, and no duplicates
when acks are lost to broker kill -9 cycles or a failover to the slave."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from brokerproc import BrokerProcess
from hpbroker import batch
from hpbroker.client import Consumer, Producer
from hpbroker.io.producer_state import DUPLICATE_SEQUENCE_NUMBER, ProducerState, SequenceError
from hpbroker.protocol import messages as m
from hpbroker.ring import cleanup_stale
from rawclient import RawClient
from test_replication import master, promote, slave, stats, wait_until


def stamped(values, pid: int, seq: int) -> bytearray:
    b = batch.encode_batch(values)
    batch.set_producer(b, pid, seq)
    batch.check_batch(b)  # the CRC was recomputed
    return b


# -- the state machine ---------------------------------------------------------------


def test_producer_state_verdicts():
    st = ProducerState()
    assert st.check(7, 100, 2)[0] == 0  # an unknown producer may start anywhere
    st.apply(7, 100, 2, 50)  # seqs 100-101 at offsets 50-51
    assert st.check(7, 102, 1) == (0, -1, -1)
    assert st.check(7, 100, 2) == (1, 50, 51)  # a retry: the original offsets
    with pytest.raises(SequenceError) as e:
        st.check(7, 105, 1)
    assert e.value.code == 21  # a gap
    for i in range(6):
        st.apply(7, 102 + i, 1, 52 + i)
    with pytest.raises(SequenceError) as e:
        st.check(7, 100, 2)  # beyond the 5 cached batches
    assert e.value.code == DUPLICATE_SEQUENCE_NUMBER
    st.apply(9, (1 << 31) - 1, 2, 60)  # wraps: last sequence is 0
    assert st.check(9, 1, 1)[0] == 0
    back, at = ProducerState.decode(st.encode(99))
    assert at == 99 and back.producers == st.producers
    st.forget_from(57)
    assert all(b[2] < 57 for bs in st.producers.values() for b in bs)


# -- the wire ---------------------------------------------------------------------------


def test_a_retried_batch_gets_its_original_offsets_and_is_stored_once(broker):
    c = RawClient(broker.url)
    rep, _ = c.call(m.InitProducerId(id=c.next_id()))
    pid = rep.producer_id
    assert pid > 0
    rep2, _ = c.call(m.InitProducerId(id=c.next_id()))
    assert rep2.producer_id != pid
    first = stamped([b"a", b"b"], pid, 0)
    r1, _ = c.call(m.Produce(id=c.next_id(), topic="idem", partition=0), [first])
    r2, _ = c.call(m.Produce(id=c.next_id(), topic="idem", partition=0), [first])  # the retry
    assert r1.code == r2.code == 0 and r1.base_offsets == r2.base_offsets == [0]
    r3, _ = c.call(m.Produce(id=c.next_id(), topic="idem", partition=0), [stamped([b"c"], pid, 2)])
    assert r3.code == 0 and r3.base_offsets == [2]
    gap, _ = c.call(m.Produce(id=c.next_id(), topic="idem", partition=0), [stamped([b"z"], pid, 9)])
    assert gap.code == 21 and "does not follow" in gap.message
    # a non-idempotent batch beside it is untouched by all this
    r4, _ = c.call(m.Produce(id=c.next_id(), topic="idem", partition=0), [batch.encode_batch([b"d"])])
    assert r4.base_offsets == [3]
    rep, payload = c.call(m.Fetch(id=c.next_id(), topic="idem", partition=0, offset=0))
    values = [v for _, h in batch.iter_batches(payload[0]) for v in batch.values_of(payload[0], _)]
    assert values == [b"a", b"b", b"c", b"d"]
    # the state survives a restart (snapshot at close, replay of the tail)
    broker.stop()
    broker.start()
    c = RawClient(broker.url)
    again, _ = c.call(m.Produce(id=c.next_id(), topic="idem", partition=0), [stamped([b"c"], pid, 2)])
    assert again.code == 0 and again.base_offsets == [2]


# -- lost acks, for real ---------------------------------------------------------------------


def produce_through_crashes(url: str, b: BrokerProcess | None, n: int, crashes: int, topic: str, crash) -> list:
    """Send n numbered messages with an idempotent producer while ``crash()``
    runs ``crashes`` times; -> the futures (all must succeed)."""
    p = Producer(url, acks="all", enable_idempotence=True, retries=10_000, retry_backoff_ms=100,
                 request_timeout_ms=1500, connect_timeout_ms=1500, linger_ms=2, max_in_flight=5)
    futs = []
    done = threading.Event()

    def crasher():
        for _ in range(crashes):
            while len(futs) < n * (_ + 1) // (crashes + 1) and not done.is_set():
                time.sleep(0.01)
            crash()

    t = threading.Thread(target=crasher)
    t.start()
    try:
        for i in range(n):
            futs.append(p.send(topic, b"%d" % i, partition=i % 2))
            if i % 500 == 0:
                time.sleep(0.01)  # keep requests in flight while the broker dies
        t.join(300)
        for f in futs:
            f.get(timeout=180)
    finally:
        done.set()
        p.close(30)
    return futs


def read_all(url: str, topic: str, n: int) -> Counter:
    seen = Counter()
    with Consumer(url, topic, auto_offset_reset="earliest", connect_timeout_ms=5000) as c:
        deadline = time.monotonic() + 60
        while sum(seen.values()) < n and time.monotonic() < deadline:
            for msg in c.poll(300, max_records=5000):
                seen[int(msg.value)] += 1
        time.sleep(0.5)
        for msg in c.poll(300, max_records=5000):  # anything past n is a duplicate
            seen[int(msg.value)] += 1
    return seen


def test_no_duplicates_across_broker_kill_9_cycles(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "2"))
    b.start()
    try:
        def crash():
            b.kill()
            time.sleep(0.3)
            b.start()

        n = 20_000
        produce_through_crashes(b.url, b, n, 3, "crashes", crash)
        seen = read_all(b.url, "crashes", n)
        assert set(seen) == set(range(n)), f"missing {sorted(set(range(n)) - set(seen))[:10]}"
        dups = {v: k for v, k in seen.items() if k > 1}
        assert not dups, f"{len(dups)} duplicated, e.g. {list(dups.items())[:5]}"
    finally:
        b.stop()


def test_no_duplicates_across_a_failover_to_the_slave(tmp_path):
    a = master(tmp_path, "a", broker_id=1)
    # promoted, it is alone: let acks=all go on without a slave
    s = slave(tmp_path, "s", a, broker_id=2, extra="min_insync_replicas = 1")
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")

        def crash():
            a.kill()
            promote(s)

        n = 10_000
        produce_through_crashes(f"{a.url},{s.url}", None, n, 1, "failover", crash)
        seen = read_all(s.url, "failover", n)
        assert set(seen) == set(range(n))
        assert not [v for v, k in seen.items() if k > 1]
    finally:
        s.stop(), a.stop()
        cleanup_stale(f"p{a.port}")
