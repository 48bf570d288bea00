"""The text listener's link to its broker: the ordinary client protocol.

The listener is a client of its own broker's acceptors, over the same
ZeroMQ DEALER sockets and messages as any producer or consumer
(docs/protocol.md): a put becomes part of a ``Produce`` request, so its
answer means what a ZeroMQ producer's ack means, and a get's high watermark
comes from ``ListOffsets``, so a sync master's consumers on the text port
read no further than ZeroMQ consumers do.  Partition ``p`` goes to
acceptor ``p % n``, as the client's does, so one partition's requests stay
in order.

:class:`BrokerLink` matches replies to requests by correlation id and calls
the callback given with each request; a request not answered in time is
answered locally with ``REQUEST_TIMED_OUT``.
"""

from __future__ import annotations

import heapq
import itertools
import logging

import zmq

from hpbroker.protocol import codec
from hpbroker.protocol.errors import ErrorCode, ProtocolError
from hpbroker.sockets import drain, make_socket

log = logging.getLogger("hpbroker.text")


class BrokerLink:
    def __init__(self, ctx: zmq.Context, bootstrap: str, clock, hwm: int = 100_000):
        self.ctx = ctx
        self.clock = clock
        self._hwm = hwm
        self.socks: list[zmq.Socket] = [self._dealer(bootstrap)]
        self.endpoints = [bootstrap]
        self._ids = itertools.count(1)
        self.pending: dict[int, object] = {}
        self._deadlines: list[tuple[float, int]] = []

    def _dealer(self, endpoint: str) -> zmq.Socket:
        return make_socket(self.ctx, zmq.DEALER, sndhwm=self._hwm, rcvhwm=self._hwm, connect=endpoint)

    def set_acceptors(self, endpoints: list[str]) -> list[zmq.Socket]:
        """Connect one DEALER per acceptor (the bootstrap one is acceptor 0);
        returns the sockets added."""
        added = []
        for ep in endpoints[len(self.socks):]:
            s = self._dealer(ep)
            self.socks.append(s)
            self.endpoints.append(ep)
            added.append(s)
        return added

    def request(self, make, callback, timeout_s: float, partition: int = 0, frames=()) -> int:
        """Send ``make(id)`` (and payload ``frames``) to the acceptor that
        serves ``partition``; ``callback(reply, payloads)`` runs when it is
        answered.  Returns the id."""
        rid = next(self._ids)
        req = make(rid)
        sock = self.socks[partition % len(self.socks)]
        try:
            sock.send_multipart(codec.encode_request(req, frames), copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            callback(codec.error_reply(req, ErrorCode.BUSY, "the text listener's queue to the broker is full"), [])
            return rid
        self.pending[rid] = (req, callback)
        heapq.heappush(self._deadlines, (self.clock() + timeout_s, rid))
        return rid

    def call(self, make, timeout_s: float):
        """A blocking request to acceptor 0 (start-up only)."""
        rid = next(self._ids)
        sock = self.socks[0]
        sock.send_multipart(codec.encode_request(make(rid)))
        deadline = self.clock() + timeout_s
        while True:
            left = deadline - self.clock()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                raise TimeoutError("the broker did not answer the text listener")
            rep, payloads = codec.decode_reply(sock.recv_multipart())
            if rep.id == rid:
                return rep, payloads

    def on_readable(self, sock: zmq.Socket) -> None:
        for frames in drain(sock, multipart=True, copy=False, limit=1024):
            try:
                rep, payloads = codec.decode_reply(frames)
            except ProtocolError as e:
                log.error("undecodable reply from the broker: %s", e)
                continue
            entry = self.pending.pop(rep.id, None)
            if entry is None:
                continue  # answered locally already (timed out)
            entry[1](rep, payloads)

    def expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            entry = self.pending.pop(rid, None)
            if entry is not None:
                req, cb = entry
                cb(codec.error_reply(req, ErrorCode.REQUEST_TIMED_OUT, "the broker did not answer in time"), [])

    def close(self) -> None:
        for s in self.socks:
            s.close(0)
