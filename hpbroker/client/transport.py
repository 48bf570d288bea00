"""The client side of the wire: DEALER sockets, correlation ids, deadlines.

A :class:`Transport` is single-threaded: whoever owns it (the Producer's I/O
thread, or the Consumer/Admin caller) is the only thread that touches its
sockets.  It sends requests without waiting, keeps a callback per
correlation id, and, in :meth:`poll`, hands each reply to its callback.  A
request that gets no reply before its deadline is answered locally with an
``ErrorReply`` carrying REQUEST_TIMED_OUT, so every outcome reaches the
callback as a reply (``code == 0`` means success).

Socket options (one DEALER per acceptor endpoint):

* ``LINGER`` 0 - close() never hangs; callers flush before closing.
* ``IMMEDIATE`` 1 - nothing is queued towards a peer that is not connected;
  a request that cannot be handed to zmq yet waits in a backlog (sent when
  the socket turns writable) and its deadline still runs, so an unreachable
  broker is reported instead of waited for forever.
* ``SNDHWM``/``RCVHWM`` - bounded queues (``hwm`` messages).
* ``MAXMSGSIZE`` - the largest reply accepted (``max_reply_bytes``); a
  larger one makes zmq drop the connection (the request then times out).

Each DEALER has a monitor socket (``EVENT_DISCONNECTED``): when a broker's
connection drops - the process died, the host went away - the requests
still waiting on it are answered at once, locally, with REQUEST_TIMED_OUT
("lost the connection"), instead of after their whole deadline.  Replies
that arrived before the drop are read first.  Whether a request that lost
its connection was carried out is unknown, as with any timeout.

CURVE (``curve=``, from :func:`client_curve`): every DEALER is a CURVE
client with the caller's key pair and the broker's public key.  A broker
that refuses the handshake sends nothing back, not even an error; the
monitor sees it fail.  An unknown key (ZAP status 400) or CURVE on one
side only (a mechanism mismatch) answers the requests waiting for that
broker locally with NOT_AUTHORIZED and what went wrong, instead of a
timeout.  A handshake that fails with no detail (a wrong broker key looks
so, and so does a broker dying mid-handshake) stays a retriable
"lost the connection", with a hint.

Several brokers: :meth:`Transport.discover` asks all of them for metadata
at once and adopts the one that leads (:mod:`hpbroker.client.cluster`).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from hpbroker.client.cluster import choose_leader, parse_bootstrap, reachable, topic_partitions  # noqa: F401 (re-exported)
from hpbroker.protocol import codec
from hpbroker.protocol.errors import BrokerError, ErrorCode, ProtocolError
from hpbroker.protocol.messages import ErrorReply, Metadata, MetadataReply
from hpbroker.client.curve import WATCHED, client_curve, refusal  # noqa: F401 (client_curve re-exported)
from hpbroker.sockets import Curve, drain, make_socket, try_send

log = logging.getLogger("hpbroker.client")

DEFAULT_MAX_BATCH_BYTES = 8 << 20
DEFAULT_MAX_REQUEST_BYTES = 16 << 20

OnReply = Callable[[object, list], None]

class _Call:
    __slots__ = ("on_reply", "on_sent", "deadline", "endpoint")

    def __init__(self, on_reply, on_sent, deadline, endpoint):
        self.on_reply = on_reply
        self.on_sent = on_sent
        self.deadline = deadline
        self.endpoint = endpoint


class Transport:
    def __init__(
        self,
        bootstrap,
        *,
        request_timeout_ms: int = 30_000,
        hwm: int = 10_000,
        max_reply_bytes: int = 64 << 20,
        context: zmq.Context | None = None,
        readers: bool = False,
        curve: Curve | None = None,
    ):
        self.bootstraps = parse_bootstrap(bootstrap)
        self.readers = readers  # a consumer's: a slave will do when no broker leads (discover)
        self.bootstrap = self.bootstraps[0]  # the broker whose metadata is in use
        self.request_timeout_ms = request_timeout_ms
        self.hwm = hwm
        self.max_reply_bytes = max_reply_bytes
        self.curve = curve
        # The process-wide context: a client that is garbage-collected
        # without close() must not hang in Context.term() (its sockets have
        # LINGER 0 and go with it).
        self.ctx = context or zmq.Context.instance()
        self.poller = zmq.Poller()
        self.sockets: dict[str, zmq.Socket] = {}
        self._by_socket: dict[zmq.Socket, str] = {}
        self._monitors: dict[zmq.Socket, zmq.Socket] = {}  # monitor socket -> the DEALER it watches
        self._backlog: dict[str, deque] = {}
        self.pending: dict[int, _Call] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._next_id = 0
        self.acceptors: list[str] = []
        self.max_batch_bytes = DEFAULT_MAX_BATCH_BYTES
        self.max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
        self.closed = False
        #: called with the endpoint when a connection drops, whether or not a
        #: request waited on it (the Producer's spill notices a dead broker so)
        self.on_disconnect: Callable[[str], None] | None = None

    # -- sockets ------------------------------------------------------------------

    def socket(self, endpoint: str) -> zmq.Socket:
        s = self.sockets.get(endpoint)
        if s is None:
            s = make_socket(self.ctx, zmq.DEALER, sndhwm=self.hwm, rcvhwm=self.hwm, maxmsgsize=self.max_reply_bytes,
                            options={zmq.IMMEDIATE: 1, zmq.RECONNECT_IVL: 100, zmq.RECONNECT_IVL_MAX: 2000},
                            curve=self.curve)
            mon = s.get_monitor_socket(WATCHED)
            s.connect(endpoint)
            self.sockets[endpoint] = s
            self._by_socket[s] = endpoint
            self._backlog[endpoint] = deque()
            self.poller.register(s, zmq.POLLIN)
            self._monitors[mon] = s
            self.poller.register(mon, zmq.POLLIN)
        return s

    def endpoint_for(self, partition: int) -> str:
        """Partition p is served by acceptor ``p % len(acceptors)``."""
        a = self.acceptors
        return a[partition % len(a)] if a else self.bootstrap

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- requests -----------------------------------------------------------------

    def send(
        self,
        endpoint: str,
        req,
        payloads=(),
        on_reply: OnReply | None = None,
        on_sent: Callable[[], None] | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        """Send ``req`` (whose ``id`` came from :meth:`next_id`).

        ``on_reply(reply, payloads)`` gets the reply, or a local ErrorReply
        when the deadline passes first.  With ``on_sent`` and no reply
        expected (acks=0), ``on_sent()`` runs once zmq took the message and
        ``on_reply`` only reports a timeout before that.
        """
        if self.closed:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "client is closed")
        timeout = self.request_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout / 1000.0
        self.pending[req.id] = _Call(on_reply, on_sent, deadline, endpoint)
        heapq.heappush(self._deadlines, (deadline, req.id))
        frames = codec.encode_request(req, payloads)
        sock = self.socket(endpoint)
        backlog = self._backlog[endpoint]
        if backlog or not self._try_send(sock, req.id, frames):
            if not backlog:
                self.poller.modify(sock, zmq.POLLIN | zmq.POLLOUT)
            backlog.append((req.id, frames))

    def _try_send(self, sock: zmq.Socket, rid: int, frames) -> bool:
        if not try_send(sock, frames, multipart=True, copy=False):
            return False
        call = self.pending.get(rid)
        if call is not None and call.on_sent is not None:
            del self.pending[rid]
            call.on_sent()
        return True

    def _flush_backlog(self, sock: zmq.Socket) -> None:
        endpoint = self._by_socket[sock]
        backlog = self._backlog[endpoint]
        while backlog:
            rid, frames = backlog[0]
            if rid in self.pending and not self._try_send(sock, rid, frames):
                return
            backlog.popleft()
        self.poller.modify(sock, zmq.POLLIN)

    def answer_all(self, reply) -> None:
        """Answer every waiting request locally with ``reply`` (its owner is
        shutting down)."""
        for rid in list(self.pending):
            call = self.pending.pop(rid)
            if call.on_reply is not None:
                call.on_reply(reply, [])

    def forget(self, rid: int) -> None:
        """Drop the callback of request ``rid`` (its reply will be ignored)."""
        self.pending.pop(rid, None)

    # -- the loop -------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self.pending:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def poll(self, timeout_ms: float | None) -> list:
        """Wait up to ``timeout_ms`` (None = until something happens) for
        replies, dispatch them, expire deadlines, and return the non-zmq
        file descriptors registered in :attr:`poller` that became readable."""
        dl = self.next_deadline()
        if dl is not None:
            until = max(0.0, (dl - time.monotonic()) * 1000.0)
            timeout_ms = until if timeout_ms is None else min(timeout_ms, until)
        events = self.poller.poll(None if timeout_ms is None else max(0, int(timeout_ms + 0.999)))
        fired = []
        lost = []
        for s, ev in events:
            if not isinstance(s, zmq.Socket):
                fired.append(s)
                continue
            if s in self._monitors:
                lost.append(s)
                continue
            if ev & zmq.POLLOUT:
                self._flush_backlog(s)
            if ev & zmq.POLLIN:
                self._receive(s)
        for mon in lost:
            self._on_monitor(mon)
        self._expire()
        return fired

    def _on_monitor(self, mon: zmq.Socket) -> None:
        dropped = False
        refused = None
        hint = ""
        while True:
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            dropped |= ev["event"] == zmq.EVENT_DISCONNECTED
            refused = refusal(ev) or refused
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # also what a broker dying mid-handshake looks like: a hint, and the error stays retriable
                hint = (" (the handshake failed: a wrong broker_public_key?)" if self.curve is not None else
                        " (the handshake failed: if the broker has CURVE on, pass curve_secret_key_file= and broker_public_key=)")
        sock = self._monitors[mon]
        endpoint = self._by_socket[sock]
        if refused:
            msg = f"the broker at {endpoint} refused the connection: {refused}"
            for rid in [rid for rid, call in self.pending.items() if call.endpoint == endpoint]:
                self._deliver(rid, ErrorReply(id=rid, code=int(ErrorCode.NOT_AUTHORIZED), message=msg), [])
        if not dropped:
            return
        self._receive(sock)  # replies that came before the drop are answers, not losses
        if self.on_disconnect is not None:
            self.on_disconnect(endpoint)
        msg = f"lost the connection to {endpoint} before the reply (the request may or may not have been carried out){hint}"
        for rid in [rid for rid, call in self.pending.items() if call.endpoint == endpoint]:
            self._deliver(rid, ErrorReply(id=rid, code=int(ErrorCode.REQUEST_TIMED_OUT), message=msg), [])

    def _receive(self, sock: zmq.Socket, limit: int = 1024) -> None:
        for frames in drain(sock, multipart=True, copy=False, limit=limit):
            try:
                rep, payloads = codec.decode_reply(frames)
            except ProtocolError as e:
                log.warning("undecodable reply from %s: %s", self._by_socket.get(sock), e)
                if e.id in self.pending:
                    self._deliver(e.id, ErrorReply(id=e.id, code=int(e.code), message=f"bad reply: {e.message}"), [])
                continue
            if rep.id not in self.pending:
                if rep.id == -1 and rep.code:
                    log.warning("broker rejected a request it could not read: %s", BrokerError(rep.code, rep.message))
                continue
            self._deliver(rep.id, rep, payloads)

    def _deliver(self, rid: int, rep, payloads) -> None:
        call = self.pending.pop(rid)
        if call.on_reply is not None:
            call.on_reply(rep, payloads)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            call = self.pending.get(rid)
            if call is None or call.deadline > now:
                continue
            msg = f"no reply from {call.endpoint} in time (is the broker running and reachable?)"
            self._deliver(rid, ErrorReply(id=rid, code=int(ErrorCode.REQUEST_TIMED_OUT), message=msg), [])

    # -- synchronous helpers (Consumer, Admin) ------------------------------------------

    def call(self, endpoint: str, req, payloads=(), timeout_ms: int | None = None):
        """Send and wait for the reply; raise BrokerError on a non-zero code."""
        box: list = []
        self.send(endpoint, req, payloads, on_reply=lambda r, p: box.append((r, p)), timeout_ms=timeout_ms)
        while not box:
            self.poll(None)
        rep, p = box[0]
        if rep.code:
            raise BrokerError(rep.code, rep.message)
        return rep, p

    # -- several brokers --------------------------------------------------------------

    @property
    def several(self) -> bool:
        return len(self.bootstraps) > 1

    def discover(self, on_done: Callable[[MetadataReply | None], None], *, timeout_ms: int | None = None) -> None:
        """Ask every bootstrap broker for metadata at once.  Once each has
        answered or timed out, adopt the leader - a master or standalone
        broker, the highest leader epoch first, then the order given - and
        call ``on_done`` with its reply, or with None when none leads.  For
        ``readers`` (consumers: a slave serves fetches) the first slave that
        answered is adopted when no broker leads."""
        answers: dict[str, MetadataReply] = {}
        bootstraps = list(self.bootstraps)  # another thread may replace the list meanwhile (Producer._follow)
        left = [len(bootstraps)]

        def one(ep, rep, _p):
            if rep.code == 0 and isinstance(rep, MetadataReply):
                answers[ep] = rep
            left[0] -= 1
            if left[0] == 0:
                on_done(self._adopt(answers, bootstraps))

        for ep in bootstraps:
            self.send(ep, Metadata(id=self.next_id(), topics=[]), on_reply=lambda r, p, ep=ep: one(ep, r, p),
                      timeout_ms=timeout_ms)

    def _adopt(self, answers: dict[str, MetadataReply], bootstraps: list[str] | None = None) -> MetadataReply | None:
        ep = choose_leader(answers, self.bootstraps if bootstraps is None else bootstraps, self.readers)
        if ep is None:
            return None
        if ep != self.bootstrap:
            log.warning("using broker %s (%s, leader epoch %d)", ep, answers[ep].role, answers[ep].leader_epoch)
        self.bootstrap = ep
        self.apply_metadata(answers[ep])
        return answers[ep]

    def discover_now(self, timeout_ms: int | None = None) -> MetadataReply | None:
        """:meth:`discover`, waiting for the outcome (Consumer, Admin)."""
        box: list = []
        self.discover(box.append, timeout_ms=timeout_ms)
        while not box:
            self.poll(None)
        return box[0]

    def metadata(self, topics: list[str] | None = None, timeout_ms: int | None = None) -> MetadataReply:
        if self.several and not self.acceptors and self.discover_now(timeout_ms) is None:
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"no broker of {', '.join(self.bootstraps)} "
                              f"{'answered' if self.readers else 'leads (is a master or standalone) or answered'}")
        endpoint = self.acceptors[0] if self.acceptors else self.bootstrap
        rep, _ = self.call(endpoint, Metadata(id=self.next_id(), topics=topics), timeout_ms=timeout_ms)
        if not isinstance(rep, MetadataReply):
            raise BrokerError(ErrorCode.INTERNAL, f"expected MetadataReply, got {type(rep).__name__}")
        self.apply_metadata(rep)
        return rep

    def apply_metadata(self, rep: MetadataReply) -> None:
        self.acceptors = [reachable(a, self.bootstrap) for a in rep.acceptors] or [self.bootstrap]
        if rep.max_batch_bytes > 0:
            self.max_batch_bytes = rep.max_batch_bytes
        if rep.max_request_bytes > 0:
            self.max_request_bytes = rep.max_request_bytes

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for s in self.sockets.values():
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
            s.close(linger=0)
        for mon in self._monitors:
            mon.close(linger=0)
        self._monitors.clear()
        self.sockets.clear()
