"""Short versions of the fault-injection sweeps in tools/ (docs/reliability.md
has the full runs and their figures): the same code, fewer trials."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import _sweep  # noqa: E402


def test_torn_tails_and_junk_recover_cleanly(tmp_path):
    r = _sweep.load("sweep-torn").run(trials=40, seed=11, workdir=str(tmp_path), progress=False)
    assert r["clean"] == r["trials"], r["failures"]


def test_every_bit_flip_in_a_log_fences_and_none_is_silent(tmp_path):
    r = _sweep.load("sweep-bitflip").run(trials=45, seed=12, workdir=str(tmp_path), progress=False)
    assert r["silent"] == 0, r["silent_cases"]
    assert r["log_flips_fenced"] == r["log_flips"] > 0, r["by_region"]


def test_eio_never_acks_after_a_failed_call_and_fences(tmp_path):
    r = _sweep.load("sweep-ioerror").run(trials=24, workdir=str(tmp_path), progress=False)
    assert r["problem_runs"] == 0, r["problems"]
    assert any(s["fenced"] for s in r["by_op"].values())


def test_power_loss_keeps_everything_acknowledged(tmp_path):
    r = _sweep.load("sweep-powerloss").run(points=12, states=3, seed=13, workdir=str(tmp_path), progress=False)
    assert r["lost"] == 0, r["lost_cases"]
    assert r["crash_states"] >= 30 and r["recovered"] > 0


# -- wire fuzzing: the harness of tools/fuzz-wire under hypothesis ----------------------------

fuzz = _sweep.load("fuzz-wire")
_HARNESS: dict = {}


def harness(tmp_path_factory):
    if "h" not in _HARNESS:
        _HARNESS["h"] = fuzz.Harness(str(tmp_path_factory.mktemp("fuzz")))
    return _HARNESS["h"]


def _checked(h, name):
    return fuzz.Checked(fuzz.target_fn(h, name), max_alloc=16 << 20, timeout=30.0)


def _mutants(name):
    seeds = fuzz.seeds()[name]
    return st.one_of(
        st.binary(max_size=600),
        st.tuples(st.sampled_from(seeds), st.randoms(use_true_random=False)).map(lambda t: fuzz.mutate(t[1], t[0])),
    )


@pytest.mark.parametrize("name", ["wire", "batch", "fetch", "reply"])
def test_fuzzed_inputs_never_crash_hang_or_overallocate(name, tmp_path_factory):
    chk = _checked(harness(tmp_path_factory), name)
    chk.trace_every = 1

    @settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_mutants(name))
    def one(data):
        chk(data)

    one()
    assert (chk.crashes, chk.hangs, chk.over) == (0, 0, 0), chk.first
    assert chk.runs >= 250


def test_a_live_broker_survives_garbage_from_several_sockets():
    r = fuzz.live(4.0, sockets=4, seed=5, progress=False)
    assert r["all_processes_alive"], r["processes"]
    assert r["normal_client_ok"] and r["messages_sent"] > 100
