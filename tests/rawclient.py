"""A synchronous raw-protocol client for tests: one DEALER, one request at a time.

It deliberately uses only pyzmq, hpbroker.protocol and hpbroker.batch, so
broker tests do not depend on the Python client's own logic.
"""

from __future__ import annotations

import itertools

import zmq

from hpbroker import batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m


class RawClient:
    def __init__(self, url: str, timeout_ms: int = 30_000, curve: tuple[bytes, bytes, bytes] | None = None):
        """``curve``: (this client's public key, its secret key, the broker's public key), Z85."""
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(url)
        self.timeout_ms = timeout_ms
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def send_frames(self, frames) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int | None = None):
        if not self.sock.poll(self.timeout_ms if timeout_ms is None else timeout_ms):
            raise TimeoutError("no reply from the broker")
        return codec.decode_reply(self.sock.recv_multipart())

    def call(self, req, payloads=()):
        self.send_frames(codec.encode_request(req, payloads))
        rep, frames = self.recv()
        assert rep.id == req.id, (rep, req)
        return rep, frames

    def produce(self, topic: str, partition: int, batches, acks: int = 1):
        return self.call(m.Produce(id=self.next_id(), topic=topic, partition=partition, acks=acks), batches)[0]

    def fetch(self, topic: str, partition: int, offset: int, max_bytes: int = 1 << 20, max_wait_ms: int = 0):
        rep, frames = self.call(m.Fetch(id=self.next_id(), topic=topic, partition=partition, offset=offset,
                                        max_bytes=max_bytes, max_wait_ms=max_wait_ms))
        return rep, (bytes(frames[0]) if frames else b"")

    def fetch_all(self, topic: str, partition: int, start: int = 0) -> list[batch.Record]:
        """Every record from ``start`` up to the high watermark."""
        out: list[batch.Record] = []
        offset = start
        while True:
            rep, data = self.fetch(topic, partition, offset, max_bytes=4 << 20)
            assert rep.code == 0, rep
            if not data:
                return out
            next_offset = offset
            for pos, h in batch.iter_batches(data):
                batch.check_batch(data, pos, h.batch_length)
                out.extend(r for r in batch.records_of(data, pos) if r.offset >= offset)
                next_offset = h.base_offset + h.record_count
            assert next_offset > offset, "fetch returned no batch past the requested offset"
            offset = next_offset

    def close(self) -> None:
        self.sock.close(0)
