"""The acceptor process: client sockets in, ring records out, acks back.

One thread, one ``zmq.Poller`` over the sockets of
:mod:`hpbroker.net.acceptor_sockets`, passed in.  Each turn of the loop
(:meth:`Acceptor.step`) handles what arrived, then the time:

* client requests: produce requests are checked (sizes, header, CRC32C:
  per batch, never per record) and copied into their writer's ring
  (:func:`hpbroker.net.produce.hand_off`); fetches are read from the
  segment files (:mod:`hpbroker.net.fetch`); the rest is
  :mod:`hpbroker.net.admin`'s;
* writer completions, the replicator's state, slave writers' reports and
  the time go to :class:`hpbroker.net.acks.ProduceAcks`, which says which
  produce replies to send;
* the supervisor's cluster view goes to :class:`hpbroker.net.cluster.Cluster`.
"""

from __future__ import annotations

import logging
import signal
import time
from itertools import count

import zmq
from zmq.utils.monitor import parse_monitor_message

from hpbroker import config as config_mod
from hpbroker.procutil import child_setup, freeze_heap
from hpbroker.ipc import handoff
from hpbroker.ipc import lease as lease_mod
from hpbroker.net.acceptor_fetch import AcceptorFetch
from hpbroker.net.acceptor_peers import AcceptorPeers
from hpbroker.net.acceptor_sockets import AcceptorSockets, open_sockets
from hpbroker.net.acceptor_stats import AcceptorStats
from hpbroker.net.acks import ProduceAcks
from hpbroker.net.admin import Admin, replicated_fetch_bound
from hpbroker.net.cluster import Cluster
from hpbroker.net.connections import EVENTS as CONNECTION_EVENTS
from hpbroker.net.connections import Connections
from hpbroker.net.fetch import FetchService
from hpbroker.net.groups import CommitSink, GroupService
from hpbroker.net.producer_ids import ProducerIds
from hpbroker.net.transactions import TxService
from hpbroker.net.produce import Drops, check_request_size, hand_off
from hpbroker.sockets import drain, try_send
from hpbroker.ring import SharedRing
from hpbroker.protocol import build_messages_batch, check_produce, codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode, ProtocolError
from hpbroker import stats

log = logging.getLogger("hpbroker.acceptor")


class Acceptor(AcceptorPeers, AcceptorFetch):
    """One acceptor's loop and its client requests; what the other
    processes say is :class:`~hpbroker.net.acceptor_peers.AcceptorPeers`'s,
    fetches are :class:`~hpbroker.net.acceptor_fetch.AcceptorFetch`'s."""

    def __init__(self, index: int, cfg: config_mod.Config, sockets: AcceptorSockets, rings: list, *,
                 clock=time.monotonic, stats=None):
        """``rings``: a ring Writer per writer process, by writer index;
        ``clock``: monotonic seconds; ``stats``: this acceptor's slot of the
        stats block (hpbroker.stats.Slot; a private one when None)."""
        self.index = index
        self.cfg = cfg
        self.rings = rings
        self.clock = clock
        self.stopping = False  # set by SIGTERM: stop taking requests, answer those in flight
        self.abandon = False  # set by SIGUSR1: a writer died, nothing in flight will complete
        self.heard_from: set[int] = set()
        self.client = sockets.client
        self.completions = sockets.completions
        self.view_sub = sockets.view
        self.repl_sub = sockets.replica_state
        self.slave_acks = sockets.slave_acks
        self.endpoint = self.client.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ack_endpoint = "" if self.slave_acks is None else self.slave_acks.getsockopt_string(zmq.LAST_ENDPOINT)
        self.cluster = Cluster(sockets.control)
        self.drops = Drops()  # acks=0 requests refused without a reply
        self.acks = ProduceAcks(cfg.broker.max_pending_requests, cfg.replication)
        self.fetch = FetchService(cfg.broker.data_dir, cfg.broker.max_fetch_bytes, cfg.broker.max_filter_scan_bytes)
        self.producer_ids = ProducerIds(cfg.broker.broker_id, index)
        self.groups = GroupService(index, cfg, self.cluster, self.fetch, self._hand_off, clock)
        self.tx = TxService(index, cfg, self.cluster, self.fetch, self._hand_off, clock)
        # disconnects roll back local transactions: a connection is its fd (zmq.SRCFD) and the
        # count of connections accepted on that fd so far (net/connections.py)
        self.connections = Connections()
        self.client_events = self.client.get_monitor_socket(CONNECTION_EVENTS)
        sec = sockets.security
        self.guard = sec.guard() if sec is not None else None  # [security]: the ACL, per request (None: off)
        self.security = sec  # refresh()ed each turn: edits of the ACL and keys are taken while running
        self.admin = Admin(index, cfg, self.cluster, self.acks, self.fetch, sockets.ctx, self.groups, self.tx,
                           probe_curve=sec.to_master() if sec is not None and cfg.replication.role == "slave" else None)
        self._fetch_replicated = replicated_fetch_bound(cfg.replication)
        # cluster mode: the fencing lease the supervisor's ZooKeeper agent renews (hpbroker/ipc/lease.py)
        self.lease = (lease_mod.Lease.open(lease_mod.path_of(cfg.broker.run_dir or f"/tmp/hpbroker-{cfg.instance}"))
                      if cfg.cluster.zookeeper else None)
        self.admin.lease = self.lease  # its stats say whether this broker is fenced
        self.stats = AcceptorStats(stats)
        self._rr = count()
        self._timeout = cfg.ring.full_timeout_ms / 1000.0
        self._stop_deadline: float | None = None
        self._poller = zmq.Poller()
        for sock in (self.client_events, self.client, self.completions, self.view_sub, self.repl_sub,
                     self.slave_acks):
            if sock is not None:
                self._poller.register(sock, zmq.POLLIN)

    def hello(self) -> None:
        self.cluster.hello(self.index, self.endpoint, self.ack_endpoint)

    def await_writers(self, writers: int, timeout_s: float = 60.0) -> None:
        """Before serving, hear from every writer once, so fetches and
        ListOffsets see the recovered high watermarks from the start."""
        deadline = self.clock() + timeout_s
        while len(self.heard_from) < writers:
            if self.clock() > deadline:
                raise RuntimeError(f"heard from {len(self.heard_from)} of {writers} writers in {timeout_s:.0f} s")
            if self.completions.poll(100):
                self._drain_completions()

    # -- main loop --------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped, then answer every request still in flight."""
        while not self._stopped():
            self.step(self._poll_timeout())
        self._send(self.acks.shutdown())
        # Requests still on their way in (in the kernel or ZeroMQ's I/O thread
        # when the last ones were read) get an answer too, not silence: keep
        # answering until the socket has been quiet for 50 ms (at most 2 s).
        quiet_by = self.clock() + 2.0
        self._drain_client_shutdown()
        while self.clock() < quiet_by and self.client.poll(50):
            self._drain_client_shutdown()

    def step(self, timeout_ms: int) -> None:
        """One turn: wait up to ``timeout_ms`` for any socket, handle what
        arrived, then answer what timed out."""
        events = dict(self._poller.poll(timeout_ms))
        if self.completions in events:
            self._drain_completions()
        if self.view_sub in events:
            self._drain_view()
        if self.repl_sub in events:
            self._drain_replica_state()
        if self.slave_acks is not None and self.slave_acks in events:
            self._drain_slave_acks()
        if self.client_events in events:  # before the client's requests
            self._drain_client_events()
        if self.client in events:
            if self._stop_deadline is None:
                self._drain_client()
            else:  # draining: new requests are answered at once, not left unread
                self._drain_client_shutdown(256)
        self._expire(self.clock())
        if self.security is not None:
            self.security.refresh()  # a clock check, but every security.reload_ms

    def _stopped(self) -> bool:
        """Once ``stopping``: has every request in flight been answered, or
        has the shutdown wait run out (at once when ``abandon``)?"""
        if not self.stopping:
            return False
        if self._stop_deadline is None:
            self._stop_deadline = self.clock() + self.cfg.broker.shutdown_timeout_ms / 1000.0
            self._answer_parked_fetches()
        return self.abandon or not self.acks.waiting or self.clock() >= self._stop_deadline

    def _poll_timeout(self) -> int:
        d = self.fetch.next_deadline()
        if d is None:
            return 100
        return max(0, min(100, int((d - self.clock()) * 1000) + 1))

    def _send(self, replies) -> None:
        now = self.clock()
        fenced = None  # cluster mode: looked up once per call, only when a produce ack is about to go
        for ident, reply in replies:
            if (self.lease is not None and reply.__class__ is m.ProduceReply and reply.code == 0
                    and ident.__class__ is bytes):
                if fenced is None:
                    fenced = not self.lease.valid()
                if fenced:
                    reply = m.ProduceReply(id=reply.id, code=ErrorCode.NOT_LEADER, message=FENCED_ACK,
                                           partition=reply.partition)
            if ident.__class__ is not bytes:  # a group commit's or a transaction's journal record
                answer = self.groups.on_commit_done(ident, reply) if ident.__class__ is CommitSink else ident.done(reply)
                if answer is None:
                    continue
                ident, reply = answer
            self.stats.answered(ident, reply, now)
            self._reply(ident, reply)

    # -- client requests ------------------------------------------------------------

    def _drain_client(self) -> None:
        for frames in drain(self.client, multipart=True, copy=False, limit=256):
            self._handle(frames[0].bytes, frames[1:])

    def _drain_client_shutdown(self, limit: int | None = None) -> None:
        """Answer waiting requests with BROKER_SHUTTING_DOWN (all, or ``limit``)."""
        for frames in drain(self.client, multipart=True, copy=False, limit=limit):
            ident = frames[0].bytes
            decoded = self._decode(ident, frames[1:])
            if decoded is not None:
                self._refuse(ident, decoded[0], BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "broker is stopping"))

    def _reply(self, ident: bytes, reply, payloads=()) -> None:
        self.stats.reply(reply)
        if not try_send(self.client, [ident, *codec.encode_reply(reply, payloads)], multipart=True, copy=False):
            log.warning("dropping a reply to a client that does not read (send high-water mark reached)")

    def _decode(self, ident: bytes, frames):
        """(request, payload frames), or None when they did not decode (then
        answered, or dropped when the header showed acks=0)."""
        try:
            return codec.decode_request(frames)
        except ProtocolError as e:
            self._refuse(ident, e, e)
            return None

    def _refuse(self, ident: bytes, req, e: BrokerError) -> None:
        """Answer ``req`` (a request, or the ProtocolError of one that did
        not decode) with the error ``e``, except an acks=0 produce: that is
        dropped and logged (docs/protocol.md, section 7)."""
        if codec.wants_reply(req):
            if isinstance(req, ProtocolError):
                self._reply(ident, codec.protocol_error_reply(req))
            else:
                self._reply(ident, codec.error_reply(req, e.code, e.message))
            return
        self.stats.dropped(e.code)
        line = self.drops.note(e.code, e.message, self.clock())
        if line:
            log.warning("%s", line)

    def _handle(self, ident: bytes, frames) -> None:
        decoded = self._decode(ident, frames)
        if decoded is None:
            return
        req, payload = decoded
        try:
            if self.guard is not None:
                self.guard.check(frames[0], req)  # NOT_AUTHORIZED unless the ACL lets its principal
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
                case m.InitProducerId():
                    self._reply(ident, m.InitProducerIdReply(id=req.id, producer_id=self.producer_ids.next()))
                case m.FindCoordinator():
                    self._reply(ident, self.groups.find_coordinator(req))
                case m.GroupHeartbeat():
                    self._reply(ident, self.groups.heartbeat(req))
                case m.OffsetCommit():
                    reply = self.groups.offset_commit(ident, req)
                    if reply is not None:
                        self._reply(ident, reply)
                case m.OffsetFetch():
                    self._reply(ident, self.groups.offset_fetch(req))
                case m.ListGroups():
                    self._reply(ident, self.groups.list_groups(req))
                case m.DescribeGroup():
                    self._reply(ident, self.groups.describe(req))
                case m.TxBegin():
                    self._reply(ident, self.tx.begin(req, self._connection_of(frames[0])))
                case m.TxProduce():
                    check_request_size(payload, self.cfg.broker.max_request_bytes)
                    self.tx.produce_in(ident, req, payload)
                case m.TxEnd():
                    if payload:
                        check_request_size(payload, self.cfg.broker.max_request_bytes)
                    reply = self.tx.end(ident, req, payload)
                    if reply is not None:
                        self._reply(ident, reply)
                case m.TxList():
                    self._reply(ident, self.tx.list(req))
                case _:
                    raise BrokerError(ErrorCode.BAD_REQUEST, f"unsupported request {type(req).__name__}")
        except BrokerError as e:
            self._refuse(ident, req, e)
        except Exception as e:  # a bug must not take every other client down
            log.exception("request %s failed", type(req).__name__)
            self._refuse(ident, req, BrokerError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

    def _drain_client_events(self) -> None:
        for frames in drain(self.client_events, multipart=True):
            ev = parse_monitor_message(frames)
            gone = self.connections.on_event(ev["event"], ev["value"])
            if gone is not None:
                self.tx.disconnected(gone)

    def _connection_of(self, frame) -> tuple[int, int]:
        """The connection ``frame`` came over: the monitor's events are taken
        first, so its EVENT_ACCEPTED (emitted before any of its messages) is
        counted (net/connections.py)."""
        self._drain_client_events()
        return self.connections.of(frame.get(zmq.SRCFD))

    # -- produce ----------------------------------------------------------------

    def _produce(self, ident: bytes, req, batches: list[memoryview]) -> None:
        if req.topic.startswith("__"):
            raise BrokerError(ErrorCode.BAD_REQUEST, f"{req.topic} is internal (offset commits and transactions "
                                                     "write it)")
        t0 = self.clock()
        self._hand_off(ident, req, batches)
        self.stats.produced(ident, req, batches, t0)

    def _hand_off(self, ident, req, batches: list[memoryview]) -> None:
        """Register a produce request and copy it into its writer's ring
        (``ident``: the client's, or a CommitSink for a group commit)."""
        if self.stopping:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "broker is stopping")
        if self.cluster.view.role == "slave":
            raise BrokerError(ErrorCode.NOT_LEADER, f"this broker is a slave of {self.cfg.replication.master}; "
                                                    "produce to the master (or promote this broker)")
        if self.lease is not None and not self.lease.valid():
            raise BrokerError(ErrorCode.NOT_LEADER, FENCED)
        replicas = self.acks.admit(req.acks, self.cluster.view.role)
        partition = req.partition
        if partition < 0:
            partition = next(self._rr) % self.cluster.partitions_of(req.topic)
        self.cluster.check_partition(req.topic, partition)
        token = self.acks.register(ident, req, partition, self.clock(), replicas)
        ring = self.rings[handoff.owner_of(req.topic, partition, len(self.rings))]
        try:
            hand_off(ring, token, req.topic.encode(), partition, batches, self.cluster.view.leader_epoch, self._timeout)
        except BaseException:
            self.acks.cancel(token)  # never reached the writer: answered by the caller
            raise


FENCED = ("fenced: this master has had no answer from ZooKeeper for longer than cluster.fence_after_ms, so another "
          "broker may be master by now; retry (metadata names the master)")
FENCED_ACK = ("not acknowledged: this master lost contact with ZooKeeper (cluster.fence_after_ms) before the batch was "
              "confirmed, so it may have been replaced; the batch may be cut from this log. Retry (metadata names the "
              "master)")


def main(index: int, cfg_toml: bytes, instance: str, ring_names: list[str], endpoint: str, completions_ep: str,
         control_ep: str, view_ep: str, repl_state_ep: str, cpus: list[int] | None) -> None:
    """Entry point of an acceptor process (spawned by the supervisor)."""
    cfg = child_setup(f"acceptor{index}", cfg_toml, cpus)
    ctx = zmq.Context()
    r = cfg.ring
    shared = [SharedRing.attach(instance, name, heartbeat_ms=r.heartbeat_ms) for name in ring_names]
    rings = [s.writer(spin_us=r.spin(), full_timeout_ms=r.full_timeout_ms, dead_after_ms=r.dead_after_ms) for s in shared]
    sockets = open_sockets(ctx, index, cfg, endpoint, completions_ep, control_ep, view_ep, repl_state_ep)
    acc = Acceptor(index, cfg, sockets, rings, stats=stats.process_slot(instance, f"acceptor{index}"))

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
        acc.client.disable_monitor()
        acc.client_events.close(linger=0)
        sockets.client.close(linger=1000)
    finally:
        for s in shared:
            s.close()
        sockets.security.close()
        ctx.destroy(linger=0)
