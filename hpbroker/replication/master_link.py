"""A slave's sockets to its master, for one connection.

==========  ======  ===============================================================
socket      kind    carries
==========  ======  ===============================================================
boot        DEALER  the client Metadata request: the replication endpoints
fetch       DEALER  Hello/Welcome (handshake and keep-alives), EpochEnd, CatchUp
ack         PUSH    SlaveAck, the slave's durable offsets (dropped when the queue is full)
sub         SUB     every master writer's PUB stream of committed batches
==========  ======  ===============================================================

The sockets come from the factory passed in (``functools.partial(
hpbroker.sockets.make_socket, ctx)`` in the broker), and all close together:
a new connection starts from new sockets.  The messages are
:mod:`hpbroker.replication.messages`.
"""

from __future__ import annotations

import time
from typing import Callable

import zmq

from hpbroker import batch
from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.replication import messages as rm
from hpbroker.sockets import try_send

METADATA_TIMEOUT_MS = 2000
ACK_HWM = 100  # SlaveAcks queued for a master that does not read them


def split_batches(frames) -> list[memoryview]:
    """The batches of a PUB message's chunk frames, each a chunk of whole
    batches laid end to end.  A chunk that does not end on a batch boundary
    yields its whole batches and then the rest as one (short) piece, which
    the batch check refuses."""
    out = []
    for f in frames:
        mv = f.buffer if isinstance(f, zmq.Frame) else memoryview(f)
        end = 0
        for pos, h in batch.iter_batches(mv):
            end = pos + h.batch_length
            out.append(mv[pos:end])
        if end < len(mv):
            out.append(mv[end:])
    return out


class MasterLink:
    def __init__(self, make_socket: Callable[..., zmq.Socket], master: str, pub_hwm: int, clock=time.monotonic):
        self.make_socket = make_socket
        self.stop_requested: Callable[[], bool] = lambda: False  # the owner's stop flag
        self.master = master  # the master's client endpoint
        self.pub_hwm = pub_hwm
        self.clock = clock
        self.boot: zmq.Socket | None = None
        self.fetch: zmq.Socket | None = None
        self.ack: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None

    def metadata(self):
        """The master's reply to a client Metadata request; TimeoutError when it does not answer."""
        self.boot = self.make_socket(zmq.DEALER, connect=self.master)
        self.boot.send_multipart(codec.encode_request(m.Metadata(id=1, topics=[])))
        # in slices, so that a replicator told to stop (a promotion) stops within 100 ms, not 2 s
        deadline = self.clock() + METADATA_TIMEOUT_MS / 1000.0
        while not self.boot.poll(100):
            if self.clock() >= deadline or self.stop_requested():
                raise TimeoutError(f"no answer from the master at {self.master}")
        rep, _ = codec.decode_reply(self.boot.recv_multipart())
        return rep

    def open(self, fetch: str, ack: str) -> None:
        self.fetch = self.make_socket(zmq.DEALER, connect=fetch)
        self.ack = self.make_socket(zmq.PUSH, sndhwm=ACK_HWM, connect=ack)

    def subscribe(self, pubs: list[str]) -> None:
        self.sub = self.make_socket(zmq.SUB, subscribe=b"B", rcvhwm=self.pub_hwm, connect=pubs)

    def send(self, msg) -> None:
        """A message on the fetch socket (Hello, EpochEnd, CatchUp)."""
        self.fetch.send(rm.encoder.encode(msg))

    def request(self, msg, *, on_catch_up, idle, timeout_ms: int = 5000):
        """Send ``msg`` and wait for its answer.  A catch-up answer that
        arrives meanwhile goes to ``on_catch_up(reply, data)``; ``idle()``
        runs each 100 ms without one.  TimeoutError after ``timeout_ms``."""
        s = self.fetch
        self.send(msg)
        deadline = self.clock() + timeout_ms / 1000
        while self.clock() < deadline:
            if s.poll(100):
                frames = s.recv_multipart()
                reply = rm.from_master.decode(frames[0])
                if isinstance(reply, rm.CatchUpReply):
                    on_catch_up(reply, frames[1] if len(frames) > 1 else b"")
                    continue
                return reply
            idle()
        raise TimeoutError(f"the master did not answer {type(msg).__name__}")

    def send_ack(self, ack: ipc_replica.SlaveAck) -> bool:
        """The slave's durable offsets, unless the ack queue is full; -> sent."""
        return self.ack is not None and try_send(self.ack, ipc_replica.encoder.encode(ack))

    def close(self) -> None:
        for name in ("boot", "fetch", "ack", "sub"):
            s = getattr(self, name)
            if s is not None:
                s.close(0)
                setattr(self, name, None)
