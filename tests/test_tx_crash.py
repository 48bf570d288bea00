"""kill -9 of the broker at each step of a transaction, several cycles each
(tests/txcrash_steps.py says what each step holds when the kill comes).

After every restart: every transaction whose commit the client saw is there
exactly once, message by message; rolled-back, open and never-prepared ones
are not; a commit whose reply was lost is all there or not at all;
prepared XA branches are listed by tpc_recover() and committing or rolling
them back then works; offsets run from 0 without a gap in every partition.

The default run is two cycles per step, the steps one after another on one
broker (a step that fails leaves the next a fresh one); ``-m slow`` runs
many, the steps mixed; tools/tx-crash-sweep runs any number with progress.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from hpbroker import batch
from hpbroker.client.transaction import TxChannel
from hpbroker.protocol import messages as m
from hpbroker.tx import journal
from rawclient import RawClient
from txcrash import (CrashBroker, Ledger, all_partitions, journal_kinds, journal_writer, read_values, settled, tx_list,
                     writer_of)
from txcrash_steps import STEPS, cycle

CYCLES = 2


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One broker and ledger for the steps, replaced after a failed step."""
    held: dict = {"cb": None, "ok": False}
    try:
        yield held
    finally:
        if held["cb"] is not None:
            held["cb"].stop()


@pytest.fixture
def crash_broker(shared, tmp_path_factory):
    if shared["cb"] is None or not shared["ok"]:
        if shared["cb"] is not None:
            shared["cb"].stop()
        shared["cb"] = CrashBroker(tmp_path_factory.mktemp("txcrash")).start()
        shared["ledger"] = Ledger()
    shared["ok"] = False
    return shared


#: commit_race (the window hit by chance) runs in the slow test and tools/tx-crash-sweep
DEFAULT_STEPS = ["after_begin", "mid_sends", "after_prepare", "commit_partial", "commit_unapplied"]


@pytest.mark.parametrize("step", DEFAULT_STEPS)
def test_kill_at_each_step(crash_broker, step):
    cb, ledger = crash_broker["cb"], crash_broker["ledger"]
    rng = random.Random(f"{step}-{CYCLES}")
    for n in range(CYCLES):
        counts = cycle(cb, ledger, step, rng, n)
        assert counts.get("committed"), f"nothing was committed in cycle {n}: {counts}"
        if step in ("commit_partial", "commit_unapplied"):
            # the window was hit: the recovery finished a commit, appending only what was missing
            assert counts["recovered_commits"] >= 1, counts
            if step == "commit_partial":
                assert counts["batches_appended_again"] >= 2, counts
    crash_broker["ok"] = True


def test_a_byte_identical_batch_of_another_producer_does_not_stand_in_for_a_committed_one(crash_broker):
    """The commit's COMMIT record is durable, its append is not; meanwhile a
    plain producer appended the very same bytes (same value, same timestamp)
    to the partition.  After the restart both must be there."""
    cb = crash_broker["cb"]
    same = bytes(batch.encode_batch([b"the same bytes"], timestamp_ms=1_700_000_000_000))
    ch = TxChannel(cb.url, request_timeout_ms=30_000, connect_timeout_ms=10_000)
    raw = RawClient(cb.url)
    try:
        txid = ch.next_local_txid()
        wj = journal_writer(txid)
        tp = next(tp for tp in all_partitions() if writer_of(*tp) != wj)
        endpoint = ch.begin(txid, False, 60_000)
        os.kill(cb.writer_pid(wj), signal.SIGSTOP)  # the COMMIT record waits in the ring
        ch.t.send(endpoint, m.TxEnd(id=ch.t.next_id(), txid=txid, action="commit",
                                    parts=[m.TxPart(tp[0], tp[1], 1)]), [same])
        deadline = time.monotonic() + 30
        while not any(t.txid == txid and t.state == "committing" for t in tx_list(cb.url)):
            assert time.monotonic() < deadline, "the commit never reached the coordinator"
            time.sleep(0.05)
        # the same bytes from a plain producer, durable, after the commit's scan_from
        assert raw.produce(tp[0], tp[1], [same], acks=1).code == 0
        os.kill(cb.writer_pid(1 - wj), signal.SIGSTOP)  # the transaction's append will wait
        os.kill(cb.writer_pid(wj), signal.SIGCONT)
        while journal.COMMIT not in journal_kinds(cb.url, txid):
            assert time.monotonic() < deadline, "the COMMIT record never became durable"
            time.sleep(0.05)
        cb.kill()
    finally:
        raw.close()
        ch.close()
    cb.restart()
    settled(cb.url)
    values = [v for _, v in read_values(cb.url, tp)]
    # (a stray test value in the shared ledger's partitions: the next step needs a fresh broker)
    crash_broker["ok"] = False
    assert values.count(b"the same bytes") == 2, "the committed transaction's message is missing"


@pytest.mark.slow
def test_kill_at_random_steps_many_cycles(tmp_path):
    rng = random.Random(20)
    cb = CrashBroker(tmp_path).start()
    ledger = Ledger()
    try:
        for n in range(40):
            cycle(cb, ledger, rng.choice(list(STEPS)), rng, n)
    finally:
        cb.stop()
