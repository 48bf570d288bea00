"""The acceptor process: client sockets in, ring records out, acks back.

One thread, one ``zmq.Poller`` over four sockets:

====================  ======  ==============================================
socket                type    job
====================  ======  ==============================================
client                ROUTER  requests from producers and consumers (tcp)
completions           PULL    writers' group-commit results and watermarks
view                  SUB     cluster view (acceptors, topics) from the
                              supervisor
control               DEALER  topic creation requests to the supervisor
====================  ======  ==============================================

Per produce request the Python work is per batch: check sizes, header and
CRC, claim one ring record, copy the frames in, commit.  When and how it is
answered is :class:`hpbroker.net.acks.ProduceAcks`'s: the loop feeds it the
writers' completions, the replicator's state, the slaves' reports and the
time, and sends the replies it returns.
"""

from __future__ import annotations

import logging
import signal
import time
from itertools import count

import zmq

from hpbroker import config as config_mod
from hpbroker.procutil import child_setup, freeze_heap
from hpbroker.ipc import completions, control, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.net.fetch import FetchService
from hpbroker.net.acks import ProduceAcks
from hpbroker.net.admin import Admin, replicated_fetch_bound
from hpbroker.net.cluster import Cluster
from hpbroker.net.produce import check_request_size, hand_off
from hpbroker.sockets import drain
from hpbroker.ring import SharedRing
from hpbroker.protocol import build_messages_batch, check_produce, codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode, ProtocolError

log = logging.getLogger("hpbroker.acceptor")


def client_socket_options(sock: zmq.Socket, cfg: config_mod.Config) -> None:
    b = cfg.broker
    sock.setsockopt(zmq.MAXMSGSIZE, b.max_request_bytes + (1 << 16))
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, b.zmq_hwm)
    sock.setsockopt(zmq.RCVHWM, b.zmq_hwm)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)


class Acceptor:
    def __init__(self, index: int, cfg: config_mod.Config, ctx: zmq.Context, rings: list,
                 endpoint: str, completions_ep: str, control_ep: str, view_ep: str, repl_state_ep: str = ""):
        self.index = index
        self.cfg = cfg
        self.rings = rings
        self.stopping = False
        self.abandon = False
        self.heard_from: set[int] = set()
        self.client = ctx.socket(zmq.ROUTER)
        client_socket_options(self.client, cfg)
        self.client.bind(endpoint)
        self.endpoint = self.client.getsockopt_string(zmq.LAST_ENDPOINT)
        self.completions = ctx.socket(zmq.PULL)
        self.completions.bind(completions_ep)
        control_sock = ctx.socket(zmq.DEALER)
        control_sock.setsockopt(zmq.LINGER, 0)
        control_sock.connect(control_ep)
        self.cluster = Cluster(control_sock)
        self.view_sub = ctx.socket(zmq.SUB)
        self.view_sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.view_sub.connect(view_ep)
        self.repl_sub = ctx.socket(zmq.SUB)
        self.repl_sub.setsockopt(zmq.SUBSCRIBE, b"")
        if repl_state_ep:
            self.repl_sub.connect(repl_state_ep)
        self.slave_acks = None  # PULL: slaves' writers report their flushes here (replicated brokers)
        self.ack_endpoint = ""
        if cfg.replication.role != "standalone":
            self.slave_acks = ctx.socket(zmq.PULL)
            self.slave_acks.setsockopt(zmq.LINGER, 0)
            self.slave_acks.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
            port = cfg.replication.acceptor_ack_port
            self.slave_acks.bind(f"tcp://{cfg.broker.bind}:{port + index if port else '*'}")
            self.ack_endpoint = self.slave_acks.getsockopt_string(zmq.LAST_ENDPOINT)
        self.acks = ProduceAcks(cfg.broker.max_pending_requests, cfg.replication)
        self.fetch = FetchService(cfg.broker.data_dir, cfg.broker.max_fetch_bytes)
        self.admin = Admin(index, cfg, self.cluster, self.acks, self.fetch, ctx)
        self._fetch_replicated = replicated_fetch_bound(cfg.replication)
        self._rr = count()
        self._timeout = cfg.ring.full_timeout_ms / 1000.0

    def hello(self) -> None:
        self.cluster.hello(self.index, self.endpoint, self.ack_endpoint)

    # -- main loop --------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.client, zmq.POLLIN)
        poller.register(self.completions, zmq.POLLIN)
        poller.register(self.view_sub, zmq.POLLIN)
        poller.register(self.repl_sub, zmq.POLLIN)
        if self.slave_acks is not None:
            poller.register(self.slave_acks, zmq.POLLIN)
        stop_deadline = None
        while True:
            if self.stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + self.cfg.broker.shutdown_timeout_ms / 1000.0
                self._answer_parked_fetches()
            if stop_deadline is not None and (self.abandon or not self.acks.waiting or time.monotonic() >= stop_deadline):
                break
            timeout = self._poll_timeout()
            events = dict(poller.poll(timeout))
            if self.completions in events:
                self._drain_completions()
            if self.view_sub in events:
                while self.view_sub.poll(0):
                    v = control.from_supervisor.decode(self.view_sub.recv())
                    if isinstance(v, control.ClusterView):
                        self.cluster.view = v
                        self._bound_fetches()  # a promotion makes this a master's acceptor
            if self.repl_sub in events:
                self._drain_replica_state()
            if self.slave_acks is not None and self.slave_acks in events:
                self._drain_slave_acks()
            if self.client in events:
                if stop_deadline is None:
                    self._drain_client()
                else:  # draining: new requests are answered at once, not left unread
                    self._drain_client_shutdown(256)
            self._expire(time.monotonic())
        self._send(self.acks.shutdown())
        # Requests still on their way in (in the kernel or ZeroMQ's I/O thread
        # when the last ones were read) get an answer too, not silence: keep
        # answering until the socket has been quiet for 50 ms (at most 2 s).
        quiet_by = time.monotonic() + 2.0
        self._drain_client_shutdown()
        while time.monotonic() < quiet_by and self.client.poll(50):
            self._drain_client_shutdown()

    def _poll_timeout(self) -> int:
        d = self.fetch.next_deadline()
        if d is None:
            return 100
        return max(0, min(100, int((d - time.monotonic()) * 1000) + 1))

    def _send(self, replies) -> None:
        for ident, reply in replies:
            self._reply(ident, reply)

    def _drain_client(self) -> None:
        for _ in range(256):
            try:
                frames = self.client.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames[0].bytes, frames[1:])

    def _drain_client_shutdown(self, limit: int | None = None) -> None:
        """Answer waiting requests with BROKER_SHUTTING_DOWN (all, or ``limit``)."""
        n = 0
        while limit is None or n < limit:
            n += 1
            try:
                frames = self.client.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                req, _ = codec.decode_request(frames[1:])
            except ProtocolError:
                continue
            self._reply(frames[0].bytes, m.ErrorReply(id=req.id, code=ErrorCode.BROKER_SHUTTING_DOWN, message="broker is stopping"))

    def _reply(self, ident: bytes, reply, payloads=()) -> None:
        try:
            self.client.send_multipart([ident, *codec.encode_reply(reply, payloads)], copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropping a reply to a client that does not read (send high-water mark reached)")

    def _handle(self, ident: bytes, frames) -> None:
        try:
            req, payload = codec.decode_request(frames)
        except ProtocolError as e:
            self._reply(ident, m.ErrorReply(id=e.id, code=e.code, message=e.message))
            return
        try:
            match req:
                case m.Produce():
                    check_request_size(payload, self.cfg.broker.max_request_bytes)
                    check_produce(req, payload, max_batch_bytes=self.cfg.broker.max_batch_bytes)
                    self._produce(ident, req, payload)
                case m.ProduceMessages():
                    check_request_size(payload, self.cfg.broker.max_request_bytes)
                    built = build_messages_batch(req, payload, max_batch_bytes=self.cfg.broker.max_batch_bytes)
                    self._produce(ident, req, [memoryview(built)])
                case m.Fetch():
                    self._fetch(ident, req)
                case m.Metadata():
                    self._reply(ident, self.admin.metadata(req))
                case m.ListOffsets():
                    self._reply(ident, self.admin.list_offsets(req))
                case m.Stats():
                    self._reply(ident, self.admin.stats(req))
                case m.Promote():
                    self._reply(ident, self.admin.promote(req))
                case m.CreateTopic():
                    self._reply(ident, self.admin.create_topic(req))
                case _:
                    raise BrokerError(ErrorCode.BAD_REQUEST, f"unsupported request {type(req).__name__}")
        except BrokerError as e:
            if getattr(req, "acks", 1) != 0 or not isinstance(req, (m.Produce, m.ProduceMessages)):
                self._reply(ident, _error_reply(req, e))
        except Exception as e:  # a bug must not take every other client down
            log.exception("request %s failed", type(req).__name__)
            self._reply(ident, _error_reply(req, BrokerError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")))

    # -- produce ----------------------------------------------------------------

    def _produce(self, ident: bytes, req, batches: list[memoryview]) -> None:
        if self.stopping:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "broker is stopping")
        if self.cluster.view.role == "slave":
            raise BrokerError(ErrorCode.NOT_LEADER, f"this broker is a slave of {self.cfg.replication.master}; "
                                                    "produce to the master (or promote this broker)")
        replicas = self.acks.admit(req.acks, self.cluster.view.role)
        partition = req.partition
        if partition < 0:
            partition = next(self._rr) % self.cluster.partitions_of(req.topic)
        self.cluster.check_partition(req.topic, partition)
        token = self.acks.register(ident, req, partition, time.monotonic(), replicas)
        ring = self.rings[handoff.owner_of(req.topic, partition, len(self.rings))]
        try:
            hand_off(ring, token, req.topic.encode(), partition, batches, self.cluster.view.leader_epoch, self._timeout)
        except BaseException:
            self.acks.cancel(token)  # never reached the writer: answered by the caller
            raise

    def await_writers(self, writers: int, timeout_s: float = 60.0) -> None:
        """Before serving, hear from every writer once, so fetches and
        ListOffsets see the recovered high watermarks from the start."""
        deadline = time.monotonic() + timeout_s
        while len(self.heard_from) < writers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"heard from {len(self.heard_from)} of {writers} writers in {timeout_s:.0f} s")
            if self.completions.poll(100):
                self._drain_completions()

    def _drain_completions(self) -> None:
        moved: list[str] = []
        for frame in drain(self.completions, copy=False):
            c = completions.decoder.decode(frame.buffer)
            self.heard_from.add(c.writer)
            self._send(self.acks.on_completions(c.done))
            moved += self.fetch.update(c.hwm, c.log_start)
        if moved:
            for p in self.fetch.woken(moved):
                self._serve_fetch(p.ident, p.req)

    def _drain_replica_state(self) -> None:
        while True:
            try:
                raw = self.repl_sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            replies = self.acks.on_replica_state(ipc_replica.state_decoder.decode(raw))
            self._bound_fetches()
            self._send(replies)

    def _drain_slave_acks(self) -> None:
        """A slave's writer made a flush durable: release what that covers."""
        while True:
            try:
                raw = self.slave_acks.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            view = self.cluster.view
            self._send(self.acks.on_slave_ack(raw, view.role, view.leader_epoch))
            self._bound_fetches()  # a no-op after a refused report: nothing it reads changed

    def _bound_fetches(self) -> None:
        """Keep consumers of a master to what the in-sync slaves hold
        (replication.fetch_bound), then answer the long polls that lets go."""
        bound = None
        policy, view = self.acks.policy, self.cluster.view
        if self._fetch_replicated and view is not None and view.role == "master" and policy.insync:
            bound = policy.replicated
        self.fetch.bound = bound
        keys = self.fetch.parked_keys()
        if keys:
            for p in self.fetch.woken(keys):
                self._serve_fetch(p.ident, p.req)

    def _expire(self, now: float) -> None:
        self._send(self.acks.tick(now))
        for p in self.fetch.timed_out(now):
            self._serve_fetch(p.ident, p.req)

    # -- fetch and offsets -----------------------------------------------------------

    def _fetch(self, ident: bytes, req: m.Fetch) -> None:
        self.cluster.check_partition(req.topic, req.partition, auto=False)
        key = handoff.tp_key(req.topic, req.partition)
        if req.max_wait_ms > 0 and not self.stopping and self.fetch.nothing_yet(key, req.offset):
            self.fetch.park(ident, req, time.monotonic() + req.max_wait_ms / 1000.0)
            return
        self._serve_fetch(ident, req)

    def _serve_fetch(self, ident: bytes, req: m.Fetch) -> None:
        try:
            data, hwm, start = self.fetch.read(req.topic, req.partition, req.offset, req.max_bytes)
        except BrokerError as e:
            self._reply(ident, _error_reply(req, e))
            return
        self._reply(ident, m.FetchReply(id=req.id, high_watermark=hwm, log_start_offset=start), [data])

    def _answer_parked_fetches(self) -> None:
        for p in self.fetch.all_parked():
            self._serve_fetch(p.ident, p.req)

def _error_reply(req, e: BrokerError):
    reply_type = m.REPLY_FOR.get(type(req), m.ErrorReply)
    return reply_type(id=req.id, code=int(e.code), message=e.message)


def main(index: int, cfg_toml: bytes, instance: str, ring_names: list[str], endpoint: str, completions_ep: str,
         control_ep: str, view_ep: str, repl_state_ep: str, cpus: list[int] | None) -> None:
    """Entry point of an acceptor process (spawned by the supervisor)."""
    cfg = child_setup(f"acceptor{index}", cfg_toml, cpus)
    ctx = zmq.Context()
    r = cfg.ring
    shared = [SharedRing.attach(instance, name, heartbeat_ms=r.heartbeat_ms) for name in ring_names]
    rings = [s.writer(spin_us=r.spin(), full_timeout_ms=r.full_timeout_ms, dead_after_ms=r.dead_after_ms) for s in shared]
    acc = Acceptor(index, cfg, ctx, rings, endpoint, completions_ep, control_ep, view_ep, repl_state_ep)

    def on_term(signum, frame):
        acc.stopping = True
        if signum == signal.SIGUSR1:  # a writer died: nothing in flight will complete
            acc.abandon = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_term)
    try:
        acc.await_writers(cfg.broker.writers)
        acc.hello()
        freeze_heap()
        acc.run()
        # the last answers may still sit in ZeroMQ's queue: give them a moment
        # to reach connected clients before the socket goes (a gone client
        # costs at most this long)
        acc.client.close(linger=1000)
    finally:
        for s in shared:
            s.close()
        ctx.destroy(linger=0)
