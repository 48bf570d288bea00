"""The kill -9 sweep, short (tools/sweep-kill-ingest runs 200 cycles;
docs/reliability.md has its figures), and the ledger that judges it, shown
to count what it should."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from procfaults import kill_ingest  # noqa: E402
from procfaults.ingest_writer import plan, value  # noqa: E402
from procfaults.ledger import Acked, Ledger  # noqa: E402

from brokerproc import BrokerProcess  # noqa: E402
from hpbroker import batch  # noqa: E402
from rawclient import RawClient  # noqa: E402


def test_the_ledger_counts_lost_duplicate_and_missing_records(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4")).start()
    try:
        c = RawClient(b.url)
        ledger = Ledger(kill_ingest.PARTITIONS)
        topic = ledger.topic(kill_ingest.TOPIC)
        ledger.seeds[(1, 0)] = 0  # plan(0): the value size check reads it
        size = plan(0)[0]

        def send(p, first, n):
            rep = c.produce(topic, p, [batch.encode_batch([value(1, 0, s, size) for s in range(first, first + n)])])
            assert rep.code == 0
            return Acked(topic, p, rep.base_offsets[0], n, 1, 0, first, 1)

        good = [send(0, 0, 10), send(1, 10, 5)]
        send(1, 12, 3)  # seqs 12-14 a second time: 3 duplicates (and never acknowledged to the ledger)
        forged = Acked(topic, 2, 0, 4, 1, 0, 100, -1)  # an acknowledgement for records that are not there
        moved = Acked(topic, 0, 3, 10, 1, 0, 0, 1)  # the right records, at the wrong offset
        nowhere = Acked(ledger.topic("never-made"), 0, 0, 2, 1, 0, 200, -1)  # in a topic the broker does not know
        past_end = Acked(topic, 0, 1000, 7, 1, 0, 300, -1)  # past the log's end (a tail a promoted slave never had)
        ledger.add(good + [forged, moved, nowhere, past_end])
        counts = ledger.check(b.url, good + [forged, moved, nowhere, past_end], cycle=1)
        assert (counts["lost_all"], counts["lost_one"], counts["dup"], counts["gaps"]) == (13, 10, 3, 0)
        assert counts["unacked_found"] == 3
        # checked once, counted once; the good ones stay good in a full check
        counts = ledger.check(b.url, [], cycle=2, full=True)
        assert (counts["lost_all"], counts["lost_one"], counts["dup"]) == (0, 0, 3)
        c.close()
    finally:
        b.stop()


def test_kill_9_during_acknowledged_ingest_loses_nothing_short(tmp_path):
    out = kill_ingest.run_standalone(2, seed=11, root=str(tmp_path), max_writers=2, full_every=2,
                                     targets={"group": 0.5, "writer": 0.25, "acceptor": 0.25}, say=print)
    assert out["cycles"] == 2 and out["acked_records"] > 0
    assert {k: out[k] for k in ("lost_all", "lost_one", "dup", "gaps", "regressed", "bad")} == \
        dict(lost_all=0, lost_one=0, dup=0, gaps=0, regressed=0, bad=0)
    assert out["shm_objects_left"] == 0 and out["partitions_fenced"] == 0


# a seed whose cycle has two writers, one sending acks=all requests only and one acks=1 only
# (seed 12's two writers drew acks=1 only: a run that could not lose an acks=all record)
SEED_WITH_ACKS_ALL = 16


def test_kill_9_of_a_sync_master_then_promotion_loses_no_acks_all_short(tmp_path):
    out = kill_ingest.run_failover(1, seed=SEED_WITH_ACKS_ALL, root=str(tmp_path), max_writers=2, say=print)
    assert out["cycles"] == 1 and out["acked_all_records"] > 0 and out["acked_records"] > out["acked_all_records"]
    assert {k: out[k] for k in ("lost_all", "dup", "gaps", "regressed", "bad")} == \
        dict(lost_all=0, dup=0, gaps=0, regressed=0, bad=0)
    assert out["replicas_identical"] and out["shm_objects_left"] == 0 and out["partitions_fenced"] == 0


@pytest.mark.slow
def test_kill_9_during_acknowledged_ingest_25_cycles(tmp_path):
    out = kill_ingest.run_standalone(25, seed=21, root=str(tmp_path), full_every=10, say=print)
    assert {k: out[k] for k in ("lost_all", "lost_one", "dup", "gaps", "regressed", "bad", "partitions_fenced")} == \
        dict(lost_all=0, lost_one=0, dup=0, gaps=0, regressed=0, bad=0, partitions_fenced=0)


@pytest.mark.slow
def test_kill_9_of_a_sync_master_then_promotion_5_cycles(tmp_path):
    out = kill_ingest.run_failover(5, seed=22, root=str(tmp_path), say=print)
    assert {k: out[k] for k in ("lost_all", "dup", "gaps", "regressed", "bad", "partitions_fenced")} == \
        dict(lost_all=0, dup=0, gaps=0, regressed=0, bad=0, partitions_fenced=0)
    assert out["replicas_identical"]
