"""What releases a held acks=all: the replicator's state and the slaves'
writers' direct reports (no sockets: AckPolicy is plain logic)."""

from __future__ import annotations

from hpbroker.config import ReplicationConfig
from hpbroker.net.produce import Waiting
from hpbroker.replication.ack_policy import AckPolicy
from hpbroker.ipc.replica import ReplicaState

EPOCH = 7


def view(min_insync=2):
    return AckPolicy(ReplicationConfig(role="master", mode="sync", min_insync_replicas=min_insync))


def held(v, key="t/0", last=99, req_id=1):
    w = Waiting(b"c", req_id, 0, deadline=1e12, replicas=True, key=key, offsets=[last], last=last)
    assert v.hold(w)
    return w


def state(insync_ids, replicated=None):
    return ReplicaState(role="master", insync=len(insync_ids), replicated=replicated or {}, insync_ids=list(insync_ids))


def test_a_direct_report_from_an_in_sync_slave_releases_what_it_covers():
    v = view()
    v.update(state([2]))
    a, b = held(v, last=99, req_id=1), held(v, last=199, req_id=2)
    assert v.direct_ack(2, EPOCH, {"t/0": 100}, EPOCH) == [a]  # offset 99 is below 100, 199 is not
    assert v.direct_ack(2, EPOCH, {"t/0": 150}, EPOCH) == []
    assert v.direct_ack(2, EPOCH, {"t/0": 200}, EPOCH) == [b]
    assert v.direct_acks == 3 and v.direct_refused == 0
    assert not v.waiting


def test_reports_from_strangers_other_epochs_or_slaves_out_of_sync_release_nothing():
    v = view()
    v.update(state([2]))
    w = held(v)
    assert v.direct_ack(3, EPOCH, {"t/0": 10**9}, EPOCH) == []  # not a slave the replicator knows in sync
    assert v.direct_ack(2, EPOCH - 1, {"t/0": 10**9}, EPOCH) == []  # a report meant for an older master
    assert v.direct_refused == 2
    assert v.update(state([])) == ([], [w])  # the slave fell out of sync: the held request fails...
    w2 = held(v, req_id=2)
    assert v.direct_ack(2, EPOCH, {"t/0": 10**9}, EPOCH) == []  # ...and its reports stop counting
    assert v.direct_refused == 3
    assert v.take_all() == [w2]


def test_every_in_sync_slave_must_hold_it():
    v = view(min_insync=2)
    v.update(state([2, 3]))
    w = held(v, last=99)
    assert v.direct_ack(2, EPOCH, {"t/0": 500}, EPOCH) == []  # slave 3 has not reported
    assert v.direct_ack(3, EPOCH, {"t/0": 100}, EPOCH) == [w]


def test_an_older_replicator_state_never_takes_back_what_the_writers_reported():
    v = view()
    v.update(state([2]))
    assert v.direct_ack(2, EPOCH, {"t/0": 300}, EPOCH) == []
    released, failed = v.update(state([2], {"t/0": 120}))  # the replicator's view lags behind
    assert (released, failed) == ([], [])
    assert v.replicated["t/0"] == 300
    w = Waiting(b"c", 9, 0, deadline=1e12, replicas=True, key="t/0", offsets=[250], last=250)
    assert not v.hold(w)  # already on the slave: released at once, never held


def test_with_min_insync_replicas_1_and_no_slave_in_sync_acks_all_is_not_held():
    """A promoted slave alone (or a master whose slave fell out of sync) with
    min_insync_replicas = 1: the master is every replica in sync, so acks=all
    is answered on the local flush instead of timing out waiting for nobody."""
    v = view(min_insync=1)
    v.check_enough()  # admitted
    w = Waiting(b"c", 1, 0, 1e9, replicas=True, key="t/0")
    w.last = 99
    assert v.hold(w) is False
    v.update(state([2], {"t/0": 50}))  # a slave in sync again: it holds until the slave has it
    assert v.hold(w) is True
