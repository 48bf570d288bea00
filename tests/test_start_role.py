"""Which role a broker starts in after a promotion (hpbroker.broker.role), and
the record of the promotion in broker-state.json."""

from __future__ import annotations

import pytest

from hpbroker.broker import state as broker_state
from hpbroker.broker.role import start_role

X, Y = "tcp://10.0.0.1:7600", "tcp://10.0.0.2:7600"


class Probe:
    """Stands for the metadata request to the configured master: counts the
    calls, answers as configured."""

    def __init__(self, answer: str | None):
        self.answer, self.calls = answer, 0

    def __call__(self) -> str | None:
        self.calls += 1
        return self.answer


def test_never_promoted_starts_as_configured_without_asking_anyone():
    for role in ("standalone", "master", "slave"):
        probe = Probe("broker 1, epoch 1")
        s = start_role(role, X if role == "slave" else "", None, True, probe)
        assert (s.role, s.forget, s.why, probe.calls) == (role, False, "", 0)


def test_promoted_and_restarted_with_the_same_slave_flags_stays_master_while_that_master_is_silent():
    probe = Probe(None)
    s = start_role("slave", X, X, True, probe)
    assert (s.role, s.forget, probe.calls) == ("master", False, 1)
    assert "promoted" in s.why and "keep_promotion" in s.why


def test_its_old_master_answering_as_a_master_makes_it_a_slave_again_rather_than_a_second_master():
    s = start_role("slave", X, X, True, Probe("broker 1, epoch 1025"))
    assert (s.role, s.forget) == ("slave", True)
    assert "broker 1, epoch 1025" in s.why and "Two masters" in s.why


@pytest.mark.parametrize("role,master,keep", [
    ("slave", Y, True),  # pointed at another master: the operator chose
    ("master", "", True),  # made master by the flags
    ("standalone", "", True),
    ("slave", X, False),  # keep_promotion off: the flags always
])
def test_other_flags_end_the_promotion_without_asking(role, master, keep):
    probe = Probe(None)
    s = start_role(role, master, X, keep, probe)
    assert (s.role, s.forget, probe.calls) == (role, True, 0)
    assert X in s.why  # the log line names the promotion it ends


def test_the_promotion_record_survives_other_saves_until_cleared(tmp_path):
    assert broker_state.load_promoted_from(tmp_path) is None
    broker_state.save_epoch(tmp_path, 2, {1, 2}, promoted_from=X)
    broker_state.save_epoch(tmp_path, 1026, {1, 2, 1026})  # a restart as master: a new epoch, the record kept
    assert broker_state.load_promoted_from(tmp_path) == X
    assert broker_state.load_reigns(tmp_path) == {1, 2, 1026}
    broker_state.save_epoch(tmp_path, 1026, promoted_from=None)
    assert broker_state.load_promoted_from(tmp_path) is None
    assert (broker_state.load_epoch(tmp_path), broker_state.load_reigns(tmp_path)) == (1026, {1, 2, 1026})
