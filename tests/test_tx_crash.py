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

import random

import pytest

from txcrash import CrashBroker, Ledger
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
