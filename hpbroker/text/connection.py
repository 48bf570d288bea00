"""One text-port client connection: its parser, its answers in order, its limits.

MetaQ matches answers to requests by opaque, memcached clients by order;
the listener answers each connection's requests in the order they came,
which satisfies both.  Each request (or each run of puts read together)
takes a :class:`Slot` in :attr:`Connection.slots`; a slot is filled when
its answer is known (a put's after the broker's ack), and
:meth:`Connection.ready_output` takes the filled slots from the front.

What a connection may hold is bounded (``text_protocol.max_pending_bytes``):
the bytes of its requests still waiting for an answer, plus its answers not
yet sent.  Past the bound the listener stops reading it (:attr:`paused`);
the kernel's socket buffer then fills and TCP pushes back on the client.
"""

from __future__ import annotations

import collections
import socket

from hpbroker.text.parser import Parser


class Slot:
    """Answers for ``n`` requests, in order; ``missing`` of them not known yet."""

    __slots__ = ("parts", "missing", "weight")

    def __init__(self, n: int, weight: int = 0):
        self.parts: list = [None] * n
        self.missing = n
        self.weight = weight  # request bytes this slot holds against the connection's bound

    @classmethod
    def done(cls, data: bytes) -> "Slot":
        s = cls(1)
        s.parts[0] = data
        s.missing = 0
        return s

    def fill(self, i: int, data: bytes) -> None:
        if self.parts[i] is None:
            self.missing -= 1
        self.parts[i] = data


class Connection:
    __slots__ = ("sock", "fd", "peer", "parser", "slots", "out", "out_bytes", "waiting_bytes", "last_in",
                 "last_out", "quitting", "closed", "polling_out", "read_paused", "limit")

    def __init__(self, sock: socket.socket, peer, parser: Parser, limit: int, now: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.parser = parser
        self.slots: collections.deque[Slot] = collections.deque()
        self.out: collections.deque = collections.deque()  # bytes/memoryviews ready to send
        self.out_bytes = 0
        self.waiting_bytes = 0  # request bytes whose answers are not known yet
        self.last_in = now
        self.last_out = now  # the last time output made progress (or there was none)
        self.quitting = False  # "quit" read, or a fatal refusal: close once the answers before it are sent
        self.closed = False
        self.polling_out = False
        self.read_paused = False
        self.limit = limit

    def add(self, slot: Slot) -> Slot:
        self.slots.append(slot)
        self.waiting_bytes += slot.weight
        return slot

    @property
    def paused(self) -> bool:
        """Stop reading: too much in flight or unsent, or closing."""
        return self.quitting or self.waiting_bytes + self.out_bytes > self.limit

    @property
    def busy(self) -> bool:
        """Anything still owed to this client?"""
        return bool(self.slots or self.out)

    def ready_output(self) -> None:
        """Move the filled slots at the front to the send queue."""
        slots = self.slots
        while slots and not slots[0].missing:
            s = slots.popleft()
            self.waiting_bytes -= s.weight
            for p in s.parts:
                self.out.append(p)
                self.out_bytes += len(p)

    def send(self, now: float, max_bytes: int = 1 << 20) -> bool:
        """Send what is queued without blocking; False when the peer is gone."""
        out = self.out
        while out:
            if len(out) > 1 and len(out[0]) < max_bytes:
                # coalesce small answers into one send
                chunk = []
                size = 0
                while out and size < max_bytes:
                    p = out.popleft()
                    chunk.append(p)
                    size += len(p)
                data = b"".join(chunk)
            else:
                data = out.popleft()
                size = len(data)
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return False
            if sent:
                self.last_out = now
            self.out_bytes -= sent
            if sent < size:
                out.appendleft(memoryview(data)[sent:])
                return True
        self.last_out = now
        return True
