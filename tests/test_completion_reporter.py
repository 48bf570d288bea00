"""The completion reporter on its own: fake sockets, fake logs, a fake clock; no processes."""

from __future__ import annotations

import zmq

from hpbroker.broker.completion_reporter import CompletionReporter
from hpbroker.ipc import completions, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol.errors import ErrorCode

FENCED = int(ErrorCode.PARTITION_FENCED)


class FakeSocket:
    """Records what is sent; ``full`` makes a non-blocking send fail as ZeroMQ's does."""

    def __init__(self, full=False):
        self.sent = []
        self.full = full
        self.closed = False

    def send(self, msg, flags=0, copy=True):
        if self.full and flags & zmq.NOBLOCK:
            raise zmq.Again()
        self.sent.append(bytes(msg))

    def close(self, linger=None):
        self.closed = True

    def reports(self) -> list[completions.Completions]:
        out = [completions.decoder.decode(m) for m in self.sent]
        self.sent = []
        return out


class FakeLog:
    def __init__(self, partition, hwm, start=0):
        self.key = ("t", partition)
        self.high_watermark = hwm
        self.earliest_offset = start


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def done(token, code=0):
    return (token, code, "" if code == 0 else "failed", [token * 10] if code == 0 else [], token * 10 if code == 0 else -1)


def test_a_standalone_writer_reports_answers_and_changed_watermarks_at_once():
    acceptors = [FakeSocket(), FakeSocket()]
    r = CompletionReporter(3, acceptors)
    r.answers[1].append(done(1))
    r.changed_logs.add(FakeLog(0, 12, start=2))
    assert r.report(master=False) is False
    (first,), (second,) = acceptors[0].reports(), acceptors[1].reports()
    assert first.writer == 3 and first.done == [] and first.hwm == {"t/0": 12} and first.log_start == {"t/0": 2}
    assert second.done == [done(1)] and second.hwm == {"t/0": 12}
    assert r.answers == [[], []] and r.changed_logs == set()
    r.report(master=False)  # nothing new: nothing sent
    assert acceptors[0].sent == [] and acceptors[1].sent == []


def test_a_full_report_goes_to_every_push_even_when_nothing_changed():
    acceptor, replicator = FakeSocket(), FakeSocket()
    r = CompletionReporter(0, [acceptor, replicator], replicated=True)
    r.report([], master=True)
    assert [c.hwm for c in acceptor.reports()] == [{}] and [c.hwm for c in replicator.reports()] == [{}]


def test_held_reports_go_out_together_at_the_deadline():
    clock = FakeClock()
    acceptor, replicator = FakeSocket(), FakeSocket()
    r = CompletionReporter(0, [acceptor, replicator], replicated=True, report_every_s=0.5, clock=clock)
    r.answers[1].append(done(1))
    r.changed_logs.add(FakeLog(0, 5))
    assert r.report(master=False) is False  # a slave: nobody waits for these
    assert acceptor.sent == [] and replicator.sent == [] and r.due_at == 100.5
    clock.t += 0.25
    r.answers[1].append(done(2))
    r.changed_logs.add(FakeLog(0, 9))
    r.changed_logs.add(FakeLog(1, 3))
    r.report(master=False)
    assert replicator.sent == [] and r.due_at == 100.5  # still held; the deadline does not move
    clock.t += 0.25
    assert r.report(master=False) is True
    (c,) = replicator.reports()
    assert c.done == [done(1), done(2)] and c.hwm == {"t/0": 9, "t/1": 3}
    (c,) = acceptor.reports()
    assert c.done == [] and c.hwm == {"t/0": 9, "t/1": 3}
    assert r.due_at is None


def test_an_error_goes_out_at_once_with_what_was_held_before_it():
    clock = FakeClock()
    acceptor, replicator = FakeSocket(), FakeSocket()
    r = CompletionReporter(0, [acceptor, replicator], replicated=True, report_every_s=0.5, clock=clock)
    r.answers[1].append(done(1))
    r.report(master=False)
    assert replicator.sent == []
    r.answers[1].append(done(2, FENCED))
    r.report(master=False)
    (c,) = replicator.reports()
    assert [(d[0], d[1]) for d in c.done] == [(1, 0), (2, FENCED)]


def test_send_held_releases_everything_before_the_deadline():
    r = CompletionReporter(0, [FakeSocket(), replicator := FakeSocket()], replicated=True, report_every_s=10.0,
                           clock=FakeClock())
    r.answers[1].append(done(1))
    r.report(master=False)
    assert replicator.sent == []
    assert r.report(master=False, send_held=True) is True
    assert [c.done for c in replicator.reports()] == [[done(1)]]


def test_a_master_reports_each_flush_to_its_acceptors_and_only_full_reports_to_its_replicator():
    clock = FakeClock()
    acceptor, replicator = FakeSocket(), FakeSocket()
    r = CompletionReporter(0, [acceptor, replicator], replicated=True, report_every_s=0.5, clock=clock)
    r.answers[0].append(done(1))
    r.changed_logs.add(FakeLog(0, 5))
    r.report(master=True)
    assert [c.done for c in acceptor.reports()] == [[done(1)]]
    assert replicator.sent == []  # it hears of the flush from the publisher's note
    r.report([FakeLog(0, 5)], master=True)
    assert [c.hwm for c in replicator.reports()] == [{"t/0": 5}]


def test_hold_until_due_sets_the_deadline_once():
    clock = FakeClock()
    r = CompletionReporter(0, [FakeSocket()], report_every_s=0.5, clock=clock)
    r.hold_until_due()
    clock.t += 0.25
    r.hold_until_due()
    assert r.due_at == 100.5
    clock.t += 0.25
    assert r.report(master=True) is True and r.due_at is None


def test_a_slave_writer_tells_the_master_acceptors_each_flush_until_promoted():
    master_acceptors = [FakeSocket(), FakeSocket(full=True)]
    connected = []

    def connect(endpoints):
        connected.append(endpoints)
        return master_acceptors

    r = CompletionReporter(0, [FakeSocket()], replicated=False, connect_master_acceptors=connect)
    r.tell_master({("t", 0): 5}, master=False)  # no ACK_TO yet: nowhere to tell
    r.report_to_master(handoff.AckTo(epoch=4, slave_id=2, endpoints=["tcp://m:1", "tcp://m:2"]))
    assert connected == [["tcp://m:1", "tcp://m:2"]]
    r.tell_master({("t", 0): 5, ("t", 1): IOError("fenced")}, master=False)  # a failed partition is not durable
    (raw,) = master_acceptors[0].sent  # the full one dropped it without raising
    assert ipc_replica.slave_ack_decoder.decode(raw) == ipc_replica.SlaveAck(slave_id=2, epoch=4, durable={"t/0": 5})
    r.tell_master({("t", 0): 6}, master=True)  # promoted: no slave's report any more
    assert r.master_acceptors == [] and all(s.closed for s in master_acceptors)
    assert len(master_acceptors[0].sent) == 1


def test_an_ack_to_without_endpoints_stops_the_direct_reports():
    sockets = [FakeSocket()]
    r = CompletionReporter(0, [FakeSocket()], connect_master_acceptors=lambda endpoints: sockets)
    r.report_to_master(handoff.AckTo(epoch=4, slave_id=2, endpoints=["tcp://m:1"]))
    r.report_to_master(handoff.AckTo(epoch=4, slave_id=2, endpoints=[]))
    assert r.master_acceptors == [] and sockets[0].closed
    r.tell_master({("t", 0): 5}, master=False)
    assert sockets[0].sent == []
