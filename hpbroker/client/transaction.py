"""Transactions from the producer's side (docs/transactions.md).

:class:`Transaction` is one transaction, local or an XA branch: messages
are kept here, encoded as record batches per partition, and go to the
transaction's coordinator (an acceptor of the broker) in TxProduce requests
of at most ``transaction_flush_bytes`` each; the last ones ride with the
prepare or commit, so a small transaction costs two round trips (begin,
commit) and one journal write.  Nothing is visible to consumers before the
commit's reply says it is.

:class:`TxChannel` carries the requests: its own sockets (a
:class:`~hpbroker.client.transport.Transport`), used only by the thread
that runs the transaction, so the producer's I/O thread is never involved.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Sequence

from hpbroker import batch
from hpbroker.client.partitioner import partition_for_key
from hpbroker.client.split import encode_requests
from hpbroker.client.transport import Transport
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode


class TxChannel:
    """Synchronous transaction requests to one broker's acceptors."""

    def __init__(self, bootstrap, *, request_timeout_ms: int, connect_timeout_ms: int):
        self.t = Transport(bootstrap, request_timeout_ms=request_timeout_ms)
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.session = uuid.uuid4().hex[:16]
        self._n = itertools.count(1)

    def next_local_txid(self) -> str:
        return f"TX:{self.session}:{next(self._n)}"

    def acceptors(self) -> list[str]:
        if not self.t.acceptors:
            self.t.metadata([], timeout_ms=self.connect_timeout_ms)
        return self.t.acceptors

    def _drain_events(self) -> None:
        # This channel polls only while it waits for a reply: a connection
        # drop seen while it was idle is still queued on the monitor socket,
        # and would fail the next request, sent on the new connection, as
        # "lost the connection before the reply".  Take it now.
        self.t.poll(0)

    def call(self, endpoint: str, req, payloads=(), timeout_ms: int | None = None):
        self._drain_events()
        rep, _ = self.t.call(endpoint, req, payloads, timeout_ms=timeout_ms or self.request_timeout_ms)
        return rep

    def raw(self, endpoint: str, req, payloads=(), timeout_ms: int | None = None):
        """The reply, whatever its code (a timeout still raises)."""
        box: list = []
        self._drain_events()
        self.t.send(endpoint, req, payloads, on_reply=lambda r, p: box.append(r),
                    timeout_ms=timeout_ms or self.request_timeout_ms)
        while not box:
            self.t.poll(None)
        return box[0]

    def begin(self, txid: str, xa: bool, timeout_ms: int) -> str:
        """Open ``txid``; returns its coordinator's endpoint."""
        endpoint = self.acceptors()[0]
        for _ in range(3):
            rep = self.raw(endpoint, m.TxBegin(id=self.t.next_id(), txid=txid, xa=xa, timeout_ms=timeout_ms))
            if rep.code == ErrorCode.NOT_COORDINATOR and rep.endpoint:
                endpoint = rep.endpoint
                continue
            if rep.code:
                raise BrokerError(rep.code, rep.message)
            return endpoint
        raise BrokerError(ErrorCode.NOT_COORDINATOR, f"no acceptor took transaction {txid}")

    def on_every_acceptor(self, make) -> list:
        """``make(id)`` sent to each acceptor; the replies (errors raise)."""
        return [self.call(ep, make(self.t.next_id())) for ep in self.acceptors()]

    def end_anywhere(self, txid: str, action: str, *, heuristic: bool = False) -> m.TxReply:
        """Commit or roll back ``txid`` at whichever acceptor coordinates it."""
        last = None
        for ep in self.acceptors():
            try:
                return self.call(ep, m.TxEnd(id=self.t.next_id(), txid=txid, action=action, heuristic=heuristic))
            except BrokerError as e:
                if e.code != ErrorCode.NOT_COORDINATOR:
                    raise
                last = e
        raise last or BrokerError(ErrorCode.UNKNOWN_TRANSACTION, f"no acceptor coordinates {txid}")

    def close(self) -> None:
        self.t.close()


class Transaction:
    """One transaction; use it as a context manager (commit on a clean exit,
    rollback on an exception), or call :meth:`commit`/:meth:`rollback`."""

    def __init__(self, producer, channel: TxChannel, txid: str, *, xa: bool, timeout_ms: int,
                 flush_bytes: int):
        self.producer = producer
        self.channel = channel
        self.txid = txid
        self.xa = xa
        self.state = "open"
        self.flush_bytes = flush_bytes
        self.messages = 0
        self._pending: dict[tuple[str, int], list] = {}  # tp -> [values, keys, headers]
        self._pending_bytes = 0
        self._rr = itertools.count()
        self.endpoint = channel.begin(txid, xa, timeout_ms)

    # -- adding messages --------------------------------------------------------------

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None, *,
             headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        """Add one message (visible to consumers only once committed)."""
        self._check_open()
        value = bytes(value)
        if partition is None:
            n = self._partitions(topic)
            partition = partition_for_key(bytes(key), n) if key is not None else next(self._rr) % n
        vals, keys, hdrs = self._pending.setdefault((topic, partition), ([], [], []))
        vals.append(value)
        keys.append(None if key is None else bytes(key))
        hdrs.append(None if headers is None else batch.encode_headers(headers))
        self._added(len(value) + (0 if key is None else len(key)) + batch.ENTRY_SIZE, 1)

    def send_batch(self, topic: str, values: Sequence[bytes], partition: int | None = None,
                   keys: Sequence[bytes | None] | None = None, *,
                   headers: Sequence[Sequence[tuple[str, bytes]] | None] | None = None) -> None:
        """Add messages to one partition (round robin when not given)."""
        self._check_open()
        if not len(values):
            raise ValueError("send_batch needs at least one value")
        if partition is None:
            partition = next(self._rr) % self._partitions(topic)
        vals, ks, hdrs = self._pending.setdefault((topic, partition), ([], [], []))
        vals.extend(bytes(v) for v in values)
        ks.extend([None] * len(values) if keys is None else [None if k is None else bytes(k) for k in keys])
        if headers is None:
            hdrs.extend([None] * len(values))
        else:
            if len(headers) != len(values):
                raise ValueError("headers must be as long as values")
            hdrs.extend(None if h is None else batch.encode_headers(h) for h in headers)
        size = sum(map(len, values)) + batch.ENTRY_SIZE * len(values)
        self._added(size, len(values))

    def _partitions(self, topic: str) -> int:
        return len(self.producer.partitions_for(topic))

    def _added(self, size: int, n: int) -> None:
        self.messages += n
        self._pending_bytes += size
        if self._pending_bytes >= self.flush_bytes:
            self.flush()

    def _check_open(self) -> None:
        if self.state != "open":
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"transaction {self.txid} is {self.state}: "
                                                           "no more messages may join it")

    # -- to the broker ------------------------------------------------------------------

    def _encode(self) -> list[tuple[list[m.TxPart], list]]:
        """The pending messages as requests: (parts, frames) each, in order."""
        t = self.channel.t
        limit = max(t.max_request_bytes - (64 << 10), t.max_request_bytes // 2)
        out: list[tuple[list, list]] = []
        parts, frames, size = [], [], 0
        for (topic, p), (vals, keys, hdrs) in self._pending.items():
            ks = keys if any(k is not None for k in keys) else None
            hs = hdrs if any(h is not None for h in hdrs) else None
            for req in encode_requests(vals, ks, None, t.max_batch_bytes, limit, headers=hs):
                for b in req:
                    if frames and size + len(b) > limit:
                        out.append((parts, frames))
                        parts, frames, size = [], [], 0
                    if parts and parts[-1].topic == topic and parts[-1].partition == p:
                        parts[-1] = m.TxPart(topic, p, parts[-1].batches + 1)
                    else:
                        parts.append(m.TxPart(topic, p, 1))
                    frames.append(b)
                    size += len(b)
        if frames:
            out.append((parts, frames))
        self._pending.clear()
        self._pending_bytes = 0
        return out

    def flush(self) -> None:
        """Send what is kept here to the broker's journal (still invisible)."""
        for parts, frames in self._encode():
            self._call(m.TxProduce(id=self.channel.t.next_id(), txid=self.txid, parts=parts), frames)

    def _end(self, action: str, one_phase: bool = False) -> m.TxReply:
        reqs = self._encode() if action != "rollback" else []
        if action == "rollback":
            self._pending.clear()
        for parts, frames in reqs[:-1]:
            self._call(m.TxProduce(id=self.channel.t.next_id(), txid=self.txid, parts=parts), frames)
        parts, frames = reqs[-1] if reqs else ([], [])
        return self._call(m.TxEnd(id=self.channel.t.next_id(), txid=self.txid, action=action, parts=parts,
                                  one_phase=one_phase), frames)

    def _call(self, req, frames=()):
        try:
            return self.channel.call(self.endpoint, req, frames)
        except BrokerError as e:
            if e.code in (ErrorCode.TRANSACTION_TOO_LARGE, ErrorCode.TRANSACTION_TIMED_OUT,
                          ErrorCode.UNKNOWN_TRANSACTION):
                self.state = "rolled_back"
            raise

    # -- the end ------------------------------------------------------------------------

    def prepare(self) -> None:
        """XA phase one: durable (and replicated) before it returns."""
        self._check_open()
        self._end("prepare")
        self.state = "prepared"

    def commit(self, one_phase: bool = False) -> None:
        """Commit: when this returns every message is durable in its
        partition (and, under sync replication, on the slave) and visible."""
        if self.state not in ("open", "prepared"):
            raise BrokerError(ErrorCode.INVALID_TXN_STATE, f"transaction {self.txid} is {self.state}")
        self._end("commit", one_phase=one_phase)
        self.state = "committed"

    def rollback(self) -> None:
        if self.state in ("committed", "rolled_back"):
            return
        try:
            self._end("rollback")
        finally:
            self.state = "rolled_back"

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        elif self.state in ("open", "prepared"):
            try:
                self.rollback()
            except BrokerError:
                pass  # the original exception says more; the broker's timeout rolls it back anyway
