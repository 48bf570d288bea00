"""An Acceptor in this process: real ZeroMQ sockets (inproc), a real ring
over a bytearray, a fake supervisor thread and a fake writer (the test
reads the ring and sends the completion).  No processes, no files."""

from __future__ import annotations

import threading

import pytest
import zmq

from hpbroker import batch, config
from hpbroker.ipc import completions, control, handoff
from hpbroker.net.acceptor import Acceptor
from hpbroker.net.acceptor_sockets import AcceptorSockets
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.ring import Ring, layout as ring_layout
from hpbroker.sockets import make_socket

EPOCH = 5
CAPACITY = 1 << 16


class Rig:
    """An acceptor and the peers it talks to: a client, its writer, its supervisor."""

    def __init__(self, tmp_path, clock=None, **overrides):
        self.ctx = zmq.Context()
        self.cfg = config.load(broker__data_dir=str(tmp_path), broker__max_request_bytes=4096,
                               broker__max_batch_bytes=4096, ring__capacity_bytes=CAPACITY,
                               text_protocol__port=0, **overrides)
        ring = Ring(bytearray(ring_layout.segment_bytes(CAPACITY)), init=True, capacity=CAPACITY)
        self.ring = ring.reader()
        self.supervisor = make_socket(self.ctx, zmq.ROUTER, bind="inproc://control")
        self.writer = make_socket(self.ctx, zmq.PUSH, connect="inproc://completions")
        ctx = self.ctx
        sockets = AcceptorSockets(
            ctx=ctx,
            client=make_socket(ctx, zmq.ROUTER, bind="inproc://client"),
            completions=make_socket(ctx, zmq.PULL, bind="inproc://completions"),
            control=make_socket(ctx, zmq.DEALER, connect="inproc://control"),
            view=make_socket(ctx, zmq.SUB, subscribe=b"", connect="inproc://view"),
            replica_state=make_socket(ctx, zmq.SUB, subscribe=b""),
        )
        kw = {} if clock is None else {"clock": clock}
        self.acc = Acceptor(0, self.cfg, sockets, [ring.writer(full_timeout=0)], **kw)
        self.client = make_socket(self.ctx, zmq.DEALER, connect="inproc://client")

    def start(self, topics: dict[str, int]) -> None:
        """What main() does before serving: hear from the writer, say hello."""
        self.complete([], {f"{t}/{p}": 0 for t, n in topics.items() for p in range(n)})
        self.acc.await_writers(1, timeout_s=5)
        view = control.ClusterView(cluster_id="c", broker_id=1, leader_epoch=EPOCH, acceptors=[self.acc.endpoint],
                                   topics=topics)

        def supervisor():
            ident, raw = self.supervisor.recv_multipart()
            hello = control.to_supervisor.decode(raw)
            assert isinstance(hello, control.AcceptorHello) and hello.endpoint == "inproc://client"
            self.supervisor.send_multipart([ident, control.encoder.encode(view)])

        t = threading.Thread(target=supervisor)
        t.start()
        self.acc.hello()
        t.join()
        assert self.acc.cluster.view == view

    def send(self, req, payloads=()) -> None:
        self.client.send_multipart(codec.encode_request(req, payloads))

    def recv(self):
        assert self.client.poll(5000), "no reply"
        return codec.decode_reply(self.client.recv_multipart())[0]

    def records(self) -> list[tuple]:
        out = []
        self.ring.drain(lambda type_id, view: out.append((type_id, *handoff.read_record(view), bytes(view))))
        return out

    def complete(self, done, hwm) -> None:
        self.writer.send(completions.encoder.encode(completions.Completions(v=1, writer=0, done=done, hwm=hwm)))

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_one_produce_from_request_to_ring_record_to_ack(rig):
    rig.start({"t": 2})
    data = batch.encode_batch([b"one", b"two", b"three"])
    rig.send(m.Produce(id=7, topic="t", partition=1, acks=1), [data])
    rig.acc.step(1000)
    [(type_id, token, topic, partition, count, epoch, _, pos, record)] = rig.records()
    assert (type_id, topic, partition, count, epoch) == (handoff.PRODUCE, "t", 1, 1, EPOCH)
    assert record[pos:] == data  # the producer's bytes, copied whole
    assert len(rig.acc.acks) == 1 and not rig.client.poll(0)  # no ack before the writer's completion

    rig.complete([(token, 0, "", [100], 102)], {"t/1": 103})
    rig.acc.step(1000)
    rep = rig.recv()
    assert isinstance(rep, m.ProduceReply)
    assert (rep.id, rep.code, rep.base_offsets, rep.partition) == (7, 0, [100], 1)
    assert len(rig.acc.acks) == 0 and rig.acc.fetch.hwm["t/1"] == 103


def test_the_acceptor_clock_times_a_request_out(tmp_path):
    now = [50.0]
    rig = Rig(tmp_path, clock=lambda: now[0])
    try:
        rig.start({"t": 1})
        rig.send(m.ProduceMessages(id=8, topic="t", partition=-1, timeout_ms=2000), [b"v"])
        rig.acc.step(1000)
        [(_, token, *_)] = rig.records()
        rig.acc.step(0)
        assert not rig.client.poll(0)
        now[0] += 2.0
        rig.acc.step(0)
        rep = rig.recv()
        assert (rep.id, rep.code, rep.partition) == (8, ErrorCode.REQUEST_TIMED_OUT, 0)
        rig.complete([(token, 0, "", [0], 0)], {"t/0": 1})  # the writer got there after all: dropped
        rig.acc.step(1000)
        assert not rig.client.poll(100) and len(rig.acc.acks) == 0
    finally:
        rig.close()


def test_stopping_answers_what_is_in_flight_and_what_still_comes_in(tmp_path):
    rig = Rig(tmp_path, broker__shutdown_timeout_ms=100)
    try:
        rig.start({"t": 1})
        rig.send(m.Produce(id=1, topic="t", partition=0), [batch.encode_batch([b"x"])])
        rig.acc.step(1000)
        assert len(rig.records()) == 1
        rig.send(m.Metadata(id=2))
        rig.acc.stopping = True
        rig.acc.run()  # returns once the 100 ms wait for the writer ran out
        replies = {rep.id: rep for rep in (rig.recv(), rig.recv())}
        assert replies[1].code == ErrorCode.BROKER_SHUTTING_DOWN and isinstance(replies[1], m.ProduceReply)
        assert replies[2].code == ErrorCode.BROKER_SHUTTING_DOWN  # read while stopping: refused at once
    finally:
        rig.close()
