"""When a produce request is answered, and with what: ProduceAcks alone (no
sockets, no processes, no clock).

One table covers acks {0, 1, all} x {durable, failed, out of sync, timeout,
shutdown} on a sync master with one slave in sync (min_insync_replicas 2).
Each row feeds the events in order and names the one that answers the
request and the reply it sends; every other event sends nothing, and at
the end nothing is left owed an answer.
"""

from __future__ import annotations

import pytest

from hpbroker.config import ReplicationConfig
from hpbroker.ipc import replica as ipc_replica
from hpbroker.net.acks import ProduceAcks
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode

SLAVE, EPOCH = 2, 7
TOPIC, PART, KEY = "t", 3, "t/3"
T0, TIMEOUT_MS = 1000.0, 5000
BASE, LAST = 40, 49  # the writer put the request's one batch of 10 records at 40..49

# events
DURABLE = ("completion", 0, "")
FENCED = ("completion", ErrorCode.PARTITION_FENCED, "fdatasync failed: EIO")
SLAVE_HAS_IT = ("slave ack", LAST + 1)  # a slave writer's report: durable up to (excluding) 50
SLAVE_BEHIND = ("slave ack", LAST)
OUT_OF_SYNC = ("replica state", [])  # the replicator: no slave in sync any more
ALMOST = ("tick", TIMEOUT_MS / 1000 - 0.001)
DEADLINE = ("tick", TIMEOUT_MS / 1000)
SHUTDOWN = ("shutdown",)

# replies: (code, message, base_offsets, partition)
OK = (0, "", [BASE], PART)
FAILED = (ErrorCode.PARTITION_FENCED, "fdatasync failed: EIO", [], PART)
NOT_ENOUGH = (ErrorCode.NOT_ENOUGH_REPLICAS, "durable on the master, but the slave fell out of sync before confirming it "
              "(min_insync_replicas not met)", [], PART)
TIMED_OUT = (ErrorCode.REQUEST_TIMED_OUT, "not durable within timeout_ms; the batch may still be written", [], PART)
SLAVE_TIMED_OUT = (ErrorCode.REQUEST_TIMED_OUT, "durable on the master; the slave did not confirm within timeout_ms", [], PART)
STOPPED = (ErrorCode.BROKER_SHUTTING_DOWN, "broker stopped before the batch was durable; outcome unknown", [], -1)
SLAVE_STOPPED = (ErrorCode.BROKER_SHUTTING_DOWN, "broker stopped before the slave confirmed; durable on the master only",
                 [], PART)

ALL = -1
TABLE = [
    # acks, case,        events,                                        answered by event #, reply
    (0,   "durable",     [DURABLE, SLAVE_HAS_IT, SHUTDOWN],              None, None),
    (1,   "durable",     [DURABLE, SLAVE_HAS_IT, SHUTDOWN],              0, OK),
    (ALL, "durable",     [DURABLE, SLAVE_BEHIND, SLAVE_HAS_IT, SHUTDOWN], 2, OK),
    (0,   "failed",      [FENCED, SHUTDOWN],                             None, None),
    (1,   "failed",      [FENCED, SHUTDOWN],                             0, FAILED),
    (ALL, "failed",      [FENCED, SLAVE_HAS_IT, SHUTDOWN],               0, FAILED),
    (0,   "out of sync", [DURABLE, OUT_OF_SYNC, SHUTDOWN],               None, None),
    (1,   "out of sync", [DURABLE, OUT_OF_SYNC, SHUTDOWN],               0, OK),
    (ALL, "out of sync", [DURABLE, OUT_OF_SYNC, SLAVE_HAS_IT, SHUTDOWN], 1, NOT_ENOUGH),
    (0,   "timeout",     [ALMOST, DEADLINE, DURABLE, SHUTDOWN],          None, None),
    (1,   "timeout",     [ALMOST, DEADLINE, DURABLE, SHUTDOWN],          1, TIMED_OUT),
    (ALL, "timeout",     [DURABLE, ALMOST, DEADLINE, SLAVE_HAS_IT, SHUTDOWN], 2, SLAVE_TIMED_OUT),
    (ALL, "timeout before durable", [ALMOST, DEADLINE, DURABLE, SLAVE_HAS_IT], 1, TIMED_OUT),
    (0,   "shutdown",    [SHUTDOWN, DURABLE],                            None, None),
    (1,   "shutdown",    [SHUTDOWN, DURABLE],                            0, STOPPED),
    (ALL, "shutdown",    [DURABLE, SHUTDOWN, SLAVE_HAS_IT],              1, SLAVE_STOPPED),
    (ALL, "shutdown before durable", [SHUTDOWN, DURABLE, SLAVE_HAS_IT],  0, STOPPED),
]


def sync_master(min_insync=2, insync_ids=(SLAVE,)) -> ProduceAcks:
    acks = ProduceAcks(16, ReplicationConfig(role="master", mode="sync", min_insync_replicas=min_insync))
    assert acks.on_replica_state(state(insync_ids)) == []
    return acks


def state(insync_ids, replicated=None) -> ipc_replica.ReplicaState:
    return ipc_replica.ReplicaState(role="master", insync=len(insync_ids), replicated=replicated or {},
                                    insync_ids=list(insync_ids))


def slave_ack(upto: int, slave_id: int = SLAVE, epoch: int = EPOCH) -> bytes:
    return ipc_replica.encoder.encode(ipc_replica.SlaveAck(slave_id=slave_id, epoch=epoch, durable={KEY: upto}))


def produce(acks: ProduceAcks, level: int, req_id: int = 11, role: str = "master") -> int:
    req = m.Produce(id=req_id, topic=TOPIC, partition=PART, acks=level, timeout_ms=TIMEOUT_MS)
    return acks.register(b"client", req, PART, T0, acks.admit(level, role))


def feed(acks: ProduceAcks, token: int, event) -> list:
    match event:
        case ("completion", code, message):
            offsets, last = ([BASE], LAST) if code == 0 else ([], -1)
            return acks.on_completions([(token, code, message, offsets, last)])
        case ("slave ack", upto):
            return acks.on_slave_ack(slave_ack(upto), "master", EPOCH)
        case ("replica state", insync_ids):
            return acks.on_replica_state(state(insync_ids))
        case ("tick", after):
            return acks.tick(T0 + after)
        case ("shutdown",):
            return acks.shutdown()
    raise AssertionError(event)


@pytest.mark.parametrize("level, case, events, answered_by, reply", TABLE,
                         ids=[f"acks={'all' if r[0] == ALL else r[0]}-{r[1]}" for r in TABLE])
def test_when_and_how_a_produce_request_is_answered(level, case, events, answered_by, reply):
    acks = sync_master()
    token = produce(acks, level)
    sent = [(i, rep) for i, ev in enumerate(events) for rep in feed(acks, token, ev)]
    if answered_by is None:
        assert sent == []
    else:
        assert len(sent) == 1, sent
        i, (ident, rep) = sent[0]
        assert i == answered_by, f"answered by {events[i]}, not {events[answered_by]}"
        assert ident == b"client" and isinstance(rep, m.ProduceReply) and rep.id == 11
        assert (rep.code, rep.message, rep.base_offsets, rep.partition) == reply
    assert not acks.waiting


def test_acks_all_is_acks_1_where_no_slave_is_waited_for():
    for rcfg, role in ((ReplicationConfig(role="standalone"), "standalone"),
                       (ReplicationConfig(role="master", mode="async"), "master")):
        acks = ProduceAcks(16, rcfg)
        token = produce(acks, ALL, role=role)
        assert [rep.base_offsets for _, rep in feed(acks, token, DURABLE)] == [[BASE]]


def test_a_slave_that_already_has_it_releases_at_the_completion():
    acks = sync_master()
    token = produce(acks, ALL)
    assert feed(acks, token, SLAVE_HAS_IT) == []
    [(_, rep)] = feed(acks, token, DURABLE)
    assert (rep.code, rep.base_offsets, rep.partition) == (0, [BASE], PART)


def test_acks_all_is_refused_up_front_without_enough_replicas_in_sync():
    acks = sync_master(insync_ids=())
    with pytest.raises(BrokerError) as e:
        acks.admit(ALL, "master")
    assert e.value.code == ErrorCode.NOT_ENOUGH_REPLICAS
    assert acks.admit(1, "master") is False and len(acks) == 0


def test_busy_once_max_pending_requests_wait():
    acks = ProduceAcks(2, ReplicationConfig())
    first, second = produce(acks, 1, req_id=1), produce(acks, 0, req_id=2)  # acks=0 counts: its completion is due
    with pytest.raises(BrokerError) as e:
        produce(acks, 1, req_id=3)
    assert e.value.code == ErrorCode.BUSY
    acks.cancel(second)  # it never reached the ring
    produce(acks, 1, req_id=4)
    assert len(acks) == 2 and first != second


def test_slave_reports_count_only_from_an_in_sync_slave_of_this_master():
    acks = sync_master()
    token = produce(acks, ALL)
    assert feed(acks, token, DURABLE) == []
    policy = acks.policy
    assert acks.on_slave_ack(b"\xc1 not msgpack", "master", EPOCH) == []  # a stranger's bytes
    assert acks.on_slave_ack(slave_ack(LAST + 1), "slave", EPOCH) == []  # this broker is no master (any more)
    assert acks.on_slave_ack(slave_ack(LAST + 1, slave_id=SLAVE + 1), "master", EPOCH) == []  # not in sync
    assert acks.on_slave_ack(slave_ack(LAST + 1, epoch=EPOCH - 1), "master", EPOCH) == []  # an older master's
    assert (policy.direct_acks, policy.direct_refused) == (0, 4)
    [(_, rep)] = acks.on_slave_ack(slave_ack(LAST + 1), "master", EPOCH)
    assert rep.code == 0 and policy.direct_acks == 1


def test_the_replicator_state_releases_as_well():
    acks = sync_master()
    token = produce(acks, ALL)
    assert feed(acks, token, DURABLE) == []
    [(_, rep)] = acks.on_replica_state(state([SLAVE], {KEY: LAST + 1}))
    assert (rep.code, rep.base_offsets, rep.partition) == (0, [BASE], PART)


def test_replies_leave_in_event_order_and_each_request_once():
    acks = sync_master()
    tokens = [produce(acks, lvl, req_id=i) for i, lvl in enumerate([1, ALL, 1, ALL])]
    done = [(t, 0, "", [BASE + 10 * i], LAST + 10 * i) for i, t in enumerate(tokens)]
    assert [rep.id for _, rep in acks.on_completions(done)] == [0, 2]  # the acks=all wait for the slave
    assert [rep.id for _, rep in acks.on_completions(done)] == []  # a repeated completion answers nothing
    assert [rep.id for _, rep in acks.on_slave_ack(slave_ack(LAST + 31), "master", EPOCH)] == [1, 3]
    assert not acks.waiting and len(acks) == 0
