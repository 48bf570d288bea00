"""What a slave checks of a master before following it (hpbroker/replication/handshake.py),
and the cuts it plans from the master's epoch ends (hpbroker/replication/truncation.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol import messages as m
from hpbroker.replication import messages as rm
from hpbroker.replication import truncation
from hpbroker.replication.handshake import Refusal, check_metadata, check_welcome

MASTER = "tcp://10.0.0.1:7600"


def metadata(**kw) -> m.MetadataReply:
    fields = dict(id=1, cluster_id="c1", role="master", replication=["tcp://m:1", "tcp://m:2", "tcp://m:3", "tcp://m:4"],
                  replication_version=ipc_replica.VERSION, replication_acks=["tcp://m:5"])
    fields.update(kw)
    return m.MetadataReply(**fields)


def welcome(**kw) -> rm.Welcome:
    fields = dict(cluster_id="c1", master_id=1, epoch=1025, topics={"t": 2}, hwm={"t/0": 5}, reigns=[1, 1025])
    fields.update(kw)
    return rm.Welcome(**fields)


def test_a_masters_metadata_gives_its_replication_endpoints():
    ends = check_metadata(metadata(), MASTER, "c1")
    assert (ends.fetch, ends.ack, ends.pubs, ends.acceptor_acks) == ("tcp://m:1", "tcp://m:2", ["tcp://m:3", "tcp://m:4"],
                                                                     ["tcp://m:5"])


@pytest.mark.parametrize("reply, says", [
    (metadata(replication=[], role="standalone"), "does not serve replication (is it a master?)"),
    (metadata(replication=["tcp://m:1", "", "tcp://m:3"]), "does not serve replication"),
    (metadata(replication_version=ipc_replica.VERSION - 1), "run the same hpbroker release on master and slave"),
    (metadata(cluster_id="other"), "belongs to cluster 'other', not 'c1'"),
    (m.ErrorReply(id=1, code=7, message="bad request"), "does not serve replication"),
])
def test_a_broker_that_cannot_be_followed_is_refused_with_the_reason(reply, says):
    with pytest.raises(Refusal, match=f"^{MASTER}.*") as e:
        check_metadata(reply, MASTER, "c1")
    assert says in str(e.value)


def test_a_welcome_of_this_cluster_and_a_current_epoch_is_followed():
    w = welcome()
    assert check_welcome(w, "c1", max_epoch=1025) is w


@pytest.mark.parametrize("reply, says", [
    (rm.Refused(reason="slave of another cluster"), "the master refused this slave: slave of another cluster"),
    (welcome(cluster_id="other"), "the master's cluster id 'other' is not ours ('c1')"),
    (welcome(epoch=1), "the master's epoch 1 is older than epoch 1025 seen here: a stale master"),
])
def test_a_refusal_a_stranger_and_a_stale_master_are_not_followed(reply, says):
    with pytest.raises(Refusal) as e:
        check_welcome(reply, "c1", max_epoch=1025)
    assert str(e.value) == says


# -- truncation -------------------------------------------------------------------------------------


def cache(*entries: tuple[int, int]):
    """What truncation reads of an EpochCache: (epoch, start offset) ascending."""
    return SimpleNamespace(entries=list(entries), latest_epoch=entries[-1][0] if entries else -1)


def test_the_question_names_each_partitions_latest_epoch():
    caches = {"t/0": cache((1, 0), (1025, 40)), "u/3": cache((1, 0))}
    assert truncation.asks(caches) == [("t", 0, 1025), ("u", 3, 1)]


def test_a_tail_past_where_the_master_s_epoch_ends_is_cut_there_and_a_log_within_it_is_not():
    caches = {"t/0": cache((1, 0), (1025, 40)), "t/1": cache((1, 0))}
    plan = truncation.plan([("t", 0, 1025, 45, ""), ("t", 1, 1, 80, "")], caches, {"t/0": 50, "t/1": 30}, {1, 1025})
    assert plan.cuts == [("t", 0, 45)]
    assert plan.unclean == [] and plan.unanswered == []


def test_a_partition_the_master_cannot_answer_for_is_left_alone():
    caches = {"t/0": cache((1, 0))}
    plan = truncation.plan([("t", 0, -1, 0, "epoch checkpoint damaged")], caches, {"t/0": 50}, {1})
    assert plan.cuts == [] and plan.unanswered == [("t/0", "epoch checkpoint damaged")]


def test_cutting_a_reign_the_master_never_led_nor_followed_is_unclean_and_named():
    caches = {"t/0": cache((1, 0), (2, 50))}  # epoch 2: this broker's own reign
    plan = truncation.plan([("t", 0, 1, 50, "")], caches, {"t/0": 80}, {1, 1025})
    assert plan.cuts == [("t", 0, 50)]
    assert plan.unclean == ["t/0: offsets 50..79 (epoch 2)"]
    text = truncation.refusal(MASTER, plan.unclean)
    assert text.startswith(f"not following {MASTER}: it never led nor followed epochs")
    assert "t/0: offsets 50..79 (epoch 2)" in text and "replication.unclean_truncation = true" in text


def test_missing_the_last_batches_of_a_reign_the_master_followed_is_a_clean_cut():
    caches = {"t/0": cache((1, 0), (2, 50))}
    plan = truncation.plan([("t", 0, 1, 50, "")], caches, {"t/0": 80}, {1, 2, 1025})
    assert plan.cuts == [("t", 0, 50)] and plan.unclean == []
