"""The HTTP process's ZeroMQ link to its broker's acceptors, for asyncio.

One ``DEALER`` socket connected to every acceptor (ZeroMQ spreads requests
over them), carrying the broker's ordinary protocol messages
(docs/protocol.md): a gateway produce is a ``Produce`` request like any
client's, acknowledged by the acceptor after the same durable commit, and a
consume is a ``Fetch`` with the same long poll.  Requests are matched to
replies by id, so any number can be in flight from one event loop.
"""

from __future__ import annotations

import asyncio
import itertools

import zmq
import zmq.asyncio

from hpbroker.protocol import codec
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.sockets import make_socket


class BrokerLink:
    def __init__(self, endpoints: list[str], *, hwm: int = 100_000, max_message_bytes: int = 64 << 20):
        self.ctx = zmq.asyncio.Context()
        self.sock = make_socket(self.ctx, zmq.DEALER, sndhwm=hwm, rcvhwm=hwm, maxmsgsize=max_message_bytes,
                                connect=list(endpoints))
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def call(self, make, payloads=(), timeout_s: float = 30.0):
        """Send ``make(id)`` and return ``(reply, payload frames)``; a reply
        with a non-zero code raises BrokerError, no reply within
        ``timeout_s`` raises BrokerError(REQUEST_TIMED_OUT)."""
        rid = next(self._ids)
        req = make(rid)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            # copied: a 100 KB batch copies in microseconds, where zero-copy hands every frame to pyzmq's
            # garbage-collector thread (11 % of this process in a profile; docs/performance.md)
            await self.sock.send_multipart(codec.encode_request(req, payloads))
            rep, frames = await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"no answer from the broker within {timeout_s:.0f} s") from None
        finally:
            self._waiting.pop(rid, None)
        if rep.code:
            raise BrokerError(rep.code, rep.message)
        return rep, frames

    async def send(self, make, payloads=()) -> None:
        """Send ``make(id)`` expecting no reply (a produce with acks=0)."""
        await self.sock.send_multipart(codec.encode_request(make(next(self._ids)), payloads))

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            try:
                rep, payload = codec.decode_reply(frames)
            except BrokerError:
                continue  # not a reply we can match to a request
            fut = self._waiting.get(rep.id)
            if fut is not None and not fut.done():
                fut.set_result((rep, payload))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close(0)
        self.ctx.term()
