"""The slave's replicator with its resources passed in: in one process, no broker.

The rings are ``bytearray`` rings and the sockets ``inproc://``; the test's
own thread plays the master (metadata, handshake, epoch ends, catch-up
reads, PUB stream), the local writer (reads the ring, answers every record
with a completion) and the supervisor.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest
import zmq

from hpbroker import batch as B
from hpbroker import config
from hpbroker.io.epochs import EpochCache
from hpbroker.io.layout import partition_dir
from hpbroker.ipc import completions, control, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.replication import messages as rm
from hpbroker.replication.slave import Slave
from hpbroker.replication.writer_link import WriterLink
from hpbroker.ring import Ring, RingFull
from hpbroker.ring import layout as L
from hpbroker.sockets import drain, make_socket


def stamped(base: int, count: int, epoch: int) -> bytes:
    b = B.encode_batch([b"v%d" % (base + i) for i in range(count)], timestamp_ms=1_700_000_000_000 + base)
    B.stamp(b, base, epoch)
    return bytes(b)


def ring(capacity: int = 1 << 16) -> Ring:
    return Ring(bytearray(L.segment_bytes(capacity)), init=True, capacity=capacity)


def records(reader) -> list[tuple]:
    """Every ring record waiting: (kind, token, key, batches as bytes, arg)."""
    out = []
    while (got := reader.poll()) is not None:
        kind, view = got
        token, topic, partition, _count, _epoch, arg, pos = handoff.read_record(view)
        out.append((kind, token, handoff.tp_key(topic, partition), bytes(view[pos:]), arg))
        reader.release()
    return out


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


# -- WriterLink -------------------------------------------------------------------------------------


def test_a_record_goes_whole_to_the_ring_of_the_writer_that_owns_its_partition(ctx):
    rings = [ring(), ring()]
    link = WriterLink([r.writer() for r in rings], make_socket(ctx, zmq.PULL, bind="inproc://comp"))
    a, b = stamped(0, 3, 1), stamped(3, 2, 1)
    for p in range(4):
        link.write(handoff.REPLICA, 10 + p, "t", p, [a, b])
    link.write(handoff.TRUNCATE, 20, "t", 1, [], arg=7)
    readers = [r.reader() for r in rings]
    got = [records(rd) for rd in readers]
    for p in range(4):
        assert (handoff.REPLICA, 10 + p, f"t/{p}", a + b, 0) in got[handoff.owner_of("t", p, 2)]
    assert got[handoff.owner_of("t", 1, 2)][-1] == (handoff.TRUNCATE, 20, "t/1", b"", 7)
    assert sum(map(len, got)) == 5


def test_a_full_ring_refuses_a_record_whole(ctx):
    r = ring(1 << 14)
    link = WriterLink([r.writer(full_timeout=0)], make_socket(ctx, zmq.PULL, bind="inproc://comp"))
    big = stamped(0, 100, 1)
    sent = 0
    with pytest.raises(RingFull):
        while True:
            link.write(handoff.REPLICA, sent + 1, "t", 0, [big])
            sent += 1
    got = records(r.reader())
    assert [tok for _, tok, _, _, _ in got] == list(range(1, sent + 1))
    assert all(data == big for _, _, _, data, _ in got)


def test_writers_are_told_where_to_report_flushes_and_when_to_stop(ctx):
    rings = [ring(), ring()]
    link = WriterLink([r.writer() for r in rings], make_socket(ctx, zmq.PULL, bind="inproc://comp"))
    readers = [r.reader() for r in rings]
    link.ack_to(5, 2, [])  # never told to report: nothing to stop
    assert [records(rd) for rd in readers] == [[], []]
    link.ack_to(5, 2, ["tcp://m:9"])
    link.ack_to(5, 2, [])
    for rd in readers:
        told = [handoff.ack_to_decoder.decode(data) for kind, _, _, data, _ in records(rd) if kind == handoff.ACK_TO]
        assert told == [handoff.AckTo(epoch=5, slave_id=2, endpoints=["tcp://m:9"]),
                        handoff.AckTo(epoch=5, slave_id=2, endpoints=[])]


def test_completions_say_which_writers_have_reported(ctx):
    link = WriterLink([ring().writer(), ring().writer()], make_socket(ctx, zmq.PULL, bind="inproc://comp"))
    push = make_socket(ctx, zmq.PUSH, connect="inproc://comp")
    push.send(completions.encoder.encode(completions.Completions(v=1, writer=1, done=[], hwm={"t/0": 4})))
    assert link.poll(1000)
    assert [c.hwm for c in link.completions()] == [{"t/0": 4}]
    assert link.heard_from == {1} and not link.all_heard()


# -- a whole Slave against a played master ----------------------------------------------------------


class Played:
    """The master, the local writer and the supervisor around one Slave."""

    EPOCH = 5

    def __init__(self, ctx, reader):
        self.client = make_socket(ctx, zmq.ROUTER, bind="inproc://client")
        self.fetch = make_socket(ctx, zmq.ROUTER, bind="inproc://fetch")
        self.ack = make_socket(ctx, zmq.PULL, bind="inproc://ack")
        self.pub = make_socket(ctx, zmq.XPUB, bind="inproc://pub0")
        self.supervisor = make_socket(ctx, zmq.ROUTER, bind="inproc://control")
        self.comp = make_socket(ctx, zmq.PUSH, connect="inproc://comp")
        self.state = make_socket(ctx, zmq.SUB, subscribe=b"", connect="inproc://state")
        self.reader = reader
        self.log = [stamped(0, 5, 4), stamped(5, 5, 5), stamped(10, 10, 5)]  # the master's t/0
        self.asked: list = []  # what the slave sent on its fetch socket
        self.told: list = []  # what it told the supervisor
        self.records: list = []  # what reached the writer's ring
        self.acks: list = []
        self.stats: dict = {}
        self.subscribed = False
        self.poller = zmq.Poller()
        for s in (self.client, self.fetch, self.ack, self.pub, self.supervisor, self.state):
            self.poller.register(s, zmq.POLLIN)

    @property
    def end(self) -> int:
        last = self.log[-1]
        return B.peek_base_offset(last) + B.peek_count(last)

    def publish(self, batch: bytes) -> None:
        self.log.append(batch)
        self.pub.send_multipart([b"B", ipc_replica.encoder.encode(ipc_replica.FeedMeta("t", 0, self.end)), batch])

    def until(self, done, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "timed out"
            self.serve()

    def serve(self) -> None:
        events = dict(self.poller.poll(10))
        for frames in drain(self.client, multipart=True) if self.client in events else ():
            req, _ = codec.decode_request(frames[1:])
            rep = m.MetadataReply(id=req.id, cluster_id="c1", role="master", replication_version=ipc_replica.VERSION,
                                  replication=["inproc://fetch", "inproc://ack", "inproc://pub0"])
            self.client.send_multipart([frames[0], *codec.encode_reply(rep)])
        for ident, head in drain(self.fetch, multipart=True) if self.fetch in events else ():
            self.answer(ident, rm.to_master.decode(head))
        for head in drain(self.ack) if self.ack in events else ():
            self.acks.append(rm.to_master.decode(head))
        for frame in drain(self.pub) if self.pub in events else ():
            self.subscribed |= frame == b"\x01B"
        for ident, head in drain(self.supervisor, multipart=True) if self.supervisor in events else ():
            self.told.append(control.to_supervisor.decode(head))
            self.supervisor.send_multipart([ident, control.encoder.encode(control.Ack())])
        for state in drain(self.state) if self.state in events else ():
            self.stats = ipc_replica.state_decoder.decode(state).stats
        self.write()

    def answer(self, ident: bytes, msg) -> None:
        self.asked.append(msg)
        if isinstance(msg, rm.Hello):
            w = rm.Welcome(cluster_id="c1", master_id=1, epoch=self.EPOCH, topics={"t": 1}, hwm={"t/0": self.end},
                           reigns=[4, 5])
            self.fetch.send_multipart([ident, rm.encoder.encode(w)])
        elif isinstance(msg, rm.EpochEnd):
            assert msg.asks == [("t", 0, 4)]
            self.fetch.send_multipart([ident, rm.encoder.encode(rm.EpochEndReply(answers=[("t", 0, 4, 5, "")]))])
        elif isinstance(msg, rm.CatchUp):
            data = b"".join(b for b in self.log if B.peek_base_offset(b) >= msg.offset)
            reply = rm.CatchUpReply(topic=msg.topic, partition=msg.partition, offset=msg.offset, hwm=self.end)
            self.fetch.send_multipart([ident, rm.encoder.encode(reply), data])

    def write(self) -> None:
        """The local writer: append what the ring brings, report it durable."""
        for kind, token, key, data, arg in records(self.reader):
            self.records.append((kind, key, data, arg))
            end = arg
            for _, h in B.iter_batches(data):
                end = h.last_offset + 1
            self.report(done=[(token, 0, "", [], end)], hwm={key: end})

    def report(self, done=(), hwm=None) -> None:
        self.comp.send(completions.encoder.encode(completions.Completions(v=1, writer=0, done=list(done), hwm=hwm or {})))


def test_a_slave_truncates_catches_up_streams_repairs_a_gap_and_acks(ctx, tmp_path):
    cfg = config.Config(broker=config.BrokerConfig(cluster_id="c1", broker_id=2, data_dir=str(tmp_path)),
                        replication=config.ReplicationConfig(role="slave", master="inproc://client"))
    # the local t/0 holds offsets 0..9: 0..4 of epoch 4 (the master has them), 5..9 of epoch 4 (it does not)
    (tmp_path / "t-0").mkdir()
    EpochCache(partition_dir(str(tmp_path), "t", 0), 10).assign(4, 0)
    r = ring()
    link = WriterLink([r.writer()], make_socket(ctx, zmq.PULL, bind="inproc://comp"))
    slave = Slave(cfg, link, make_socket=functools.partial(make_socket, ctx),
                  state_pub=make_socket(ctx, zmq.PUB, bind="inproc://state"),
                  control_sock=make_socket(ctx, zmq.DEALER, connect="inproc://control"),
                  data_dir=str(tmp_path), max_epoch=4)
    world = Played(ctx, r.reader())
    world.report(hwm={"t/0": 10})  # the writer's first report: where the local log ends
    loop = threading.Thread(target=slave.run, daemon=True)
    loop.start()
    try:
        # the divergent tail is cut where epoch 4 ends on the master, then a catch-up read brings the rest
        world.until(lambda: len(world.records) >= 2)
        assert world.records[0] == (handoff.TRUNCATE, "t/0", b"", 5)
        assert world.records[1] == (handoff.REPLICA, "t/0", world.log[1] + world.log[2], 0)
        assert [type(msg) for msg in world.told] == [control.SeenEpoch, control.EnsureTopic, control.SeenEpoch]
        assert [msg.following for msg in world.told if isinstance(msg, control.SeenEpoch)] == [False, True]
        # the stream goes straight to the ring
        world.until(lambda: world.subscribed)
        world.publish(stamped(20, 5, 5))
        world.until(lambda: len(world.records) >= 3)
        assert world.records[2] == (handoff.REPLICA, "t/0", world.log[3], 0)
        # a lost message: the next one is a gap, and a read repairs it
        world.log.append(stamped(25, 5, 5))
        world.publish(stamped(30, 5, 5))
        world.until(lambda: len(world.records) >= 4)
        assert world.records[3] == (handoff.REPLICA, "t/0", world.log[4] + world.log[5], 0)
        assert [msg.offset for msg in world.asked if isinstance(msg, rm.CatchUp)] == [5, 25]
        # what the writer made durable goes back to the master
        world.until(lambda: any(a.durable == {"t/0": 35} for a in world.acks))
        assert {(a.slave_id, a.epoch) for a in world.acks} == {(2, 5)}
        # and its stats to this broker's acceptors
        world.until(lambda: world.stats.get("replication_gaps") == 1 and world.stats["replication_lag_messages"] == 0)
        assert world.stats["replication_state"] == "streaming"
        assert world.stats["replication_catch_up_reads"] == 2
        assert world.stats["replication_received_batches"] == 5
    finally:
        slave.stopping = True
        loop.join(5)
        slave.close()
    assert not loop.is_alive()
