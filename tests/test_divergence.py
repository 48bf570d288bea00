"""Where a slave's log parts from its master's (plan_cut), and the reigns a broker keeps."""

from __future__ import annotations

import json

from hpbroker.broker import state as broker_state
from hpbroker.replication.divergence import plan_cut


def test_a_tail_of_the_masters_own_epoch_is_cut_where_that_epoch_ends_there():
    # slave: epoch 1 from 0, epoch 1025 from 100, log end 180; the master has 1025 up to 150
    cut = plan_cut([(1, 0), (1025, 100)], 180, found=1025, master_end=150, master_reigns={1, 1025})
    assert (cut.offset, cut.unclean) == (150, False)
    assert plan_cut([(1, 0)], 80, found=1, master_end=120, master_reigns={1}).offset == 80  # behind: nothing to cut


def test_an_epoch_the_master_never_had_is_cut_where_this_log_leaves_its_history():
    # KIP-279: slave epochs 1 from 0 and 2 from 50, end 80; the master never had 2 and its epoch 1 runs to 100.
    # Cutting at 100 would keep 50..79 of epoch 2 where the master has epoch-1 batches.
    cut = plan_cut([(1, 0), (2, 50)], 80, found=1, master_end=100, master_reigns={1, 1025})
    assert cut.offset == 50
    assert cut.strangers == (2,) and cut.unclean  # and the master never led nor followed epoch 2


def test_missing_the_last_batches_of_a_reign_the_master_followed_is_a_clean_cut():
    # the master followed epoch 2 (in its reigns) but holds no batch of it: its last batches were never acks=all'd
    cut = plan_cut([(1, 0), (2, 50)], 80, found=1, master_end=50, master_reigns={1, 2, 1025})
    assert (cut.offset, cut.unclean) == (50, False)


def test_nothing_the_master_has_is_that_old_keeps_nothing():
    cut = plan_cut([(3, 0)], 40, found=-1, master_end=0, master_reigns={1})
    assert (cut.offset, cut.strangers) == (0, (3,))


def test_a_reign_with_nothing_to_cut_is_not_unclean():
    # epoch 2 was taken (promotion) but the log ends where epoch 1 ends on the master: nothing is lost
    cut = plan_cut([(1, 0), (2, 50)], 50, found=1, master_end=50, master_reigns={1})
    assert (cut.offset, cut.unclean) == (50, False)


def test_reigns_are_kept_across_saves_and_derived_for_an_old_state_file(tmp_path):
    (tmp_path / broker_state.NAME).write_text(json.dumps({"epoch": 3}))  # before reigns were kept
    assert broker_state.load_reigns(tmp_path) == {3}
    broker_state.save_epoch(tmp_path, 1025, {3, 1025})
    broker_state.save_epoch(tmp_path, 2049)  # None: keep what is recorded; an epoch only seen is no reign
    assert broker_state.load_epoch(tmp_path) == 2049
    assert broker_state.load_reigns(tmp_path) == {3, 1025}
    assert not (tmp_path / "broker-state.tmp").exists()
