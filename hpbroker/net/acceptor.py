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
CRC, claim one ring record, copy the frames in, commit.  The ack goes out
when the writer's completion for the request's token arrives.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from itertools import count

import msgspec
import zmq

from hpbroker import config as config_mod
from hpbroker.procutil import child_setup, freeze_heap
from hpbroker.ipc import completions, control, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.net.fetch import FetchService
from hpbroker.net.produce import Drops, Pending, Waiting, check_request_size, frame_cutoff
from hpbroker.replication.ack_policy import AckPolicy
from hpbroker.replication.probe import master_answering
from hpbroker.sockets import drain
from hpbroker.ring import PeerDead, RingClosed, RingFull, SharedRing
from hpbroker.protocol import build_messages_batch, check_produce, codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode, ProtocolError

log = logging.getLogger("hpbroker.acceptor")


def client_socket_options(sock: zmq.Socket, cfg: config_mod.Config) -> None:
    b = cfg.broker
    sock.setsockopt(zmq.MAXMSGSIZE, frame_cutoff(b.max_request_bytes))
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
        self.ctx = ctx
        self.client = ctx.socket(zmq.ROUTER)
        client_socket_options(self.client, cfg)
        self.client.bind(endpoint)
        self.endpoint = self.client.getsockopt_string(zmq.LAST_ENDPOINT)
        self.completions = ctx.socket(zmq.PULL)
        self.completions.bind(completions_ep)
        self.control = ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(control_ep)
        self.view_sub = ctx.socket(zmq.SUB)
        self.view_sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.view_sub.connect(view_ep)
        self.view: control.ClusterView | None = None
        self.repl_sub = ctx.socket(zmq.SUB)
        self.repl_sub.setsockopt(zmq.SUBSCRIBE, b"")
        if repl_state_ep:
            self.repl_sub.connect(repl_state_ep)
        self.replica = AckPolicy(cfg.replication)
        self.slave_acks = None  # PULL: slaves' writers report their flushes here (replicated brokers)
        self.ack_endpoint = ""
        if cfg.replication.role != "standalone":
            self.slave_acks = ctx.socket(zmq.PULL)
            self.slave_acks.setsockopt(zmq.LINGER, 0)
            self.slave_acks.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
            port = cfg.replication.acceptor_ack_port
            self.slave_acks.bind(f"tcp://{cfg.broker.bind}:{port + index if port else '*'}")
            self.ack_endpoint = self.slave_acks.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pending = Pending(cfg.broker.max_pending_requests)
        self.drops = Drops()  # acks=0 requests refused without a reply
        self.fetch = FetchService(cfg.broker.data_dir, cfg.broker.max_fetch_bytes)
        r = cfg.replication
        self._fetch_replicated = r.fetch_bound == "replicated" or (r.fetch_bound == "auto" and r.mode == "sync")
        self._rr = count()
        self._timeout = cfg.ring.full_timeout_ms / 1000.0

    # -- control --------------------------------------------------------------

    def _ask(self, msg, timeout_ms: int = 10_000) -> object:
        """A synchronous request to the supervisor (rare: hello, topic creation, promotion)."""
        self.control.send(control.encoder.encode(msg))
        if not self.control.poll(timeout_ms):
            raise BrokerError(ErrorCode.INTERNAL, "the supervisor did not answer a control request")
        return control.from_supervisor.decode(self.control.recv())

    def hello(self) -> None:
        reply = self._ask(control.AcceptorHello(acceptor=self.index, pid=os.getpid(), endpoint=self.endpoint,
                                                ack_endpoint=self.ack_endpoint))
        assert isinstance(reply, control.ClusterView), reply
        self.view = reply

    def ensure_topic(self, name: str, partitions: int = 0, explicit: bool = False, if_not_exists: bool = True) -> int:
        reply = self._ask(control.EnsureTopic(name=name, partitions=partitions, explicit=explicit, if_not_exists=if_not_exists))
        if reply.view is not None:
            self.view = reply.view
        if reply.code:
            raise BrokerError(reply.code, reply.message)
        return self.view.topics[name]

    def partitions_of(self, topic: str, auto: bool = True) -> int:
        n = self.view.topics.get(topic)
        if n is None:
            if not auto:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic {topic!r}")
            n = self.ensure_topic(topic)
        return n

    def check_partition(self, topic: str, partition: int, auto: bool = True) -> None:
        n = self.partitions_of(topic, auto)
        if not 0 <= partition < n:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} has partitions 0..{n - 1}, not {partition}")

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
            if stop_deadline is not None and (self.abandon or not (self.pending.waiting() or self.replica.waiting)
                                              or time.monotonic() >= stop_deadline):
                break
            timeout = self._poll_timeout()
            events = dict(poller.poll(timeout))
            if self.completions in events:
                self._drain_completions()
            if self.view_sub in events:
                while self.view_sub.poll(0):
                    v = control.from_supervisor.decode(self.view_sub.recv())
                    if isinstance(v, control.ClusterView):
                        self.view = v
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
        for token, w in self.pending.waiting():
            self._reply(w.ident, m.ProduceReply(id=w.req_id, code=ErrorCode.BROKER_SHUTTING_DOWN,
                                               message="broker stopped before the batch was durable; outcome unknown"))
            self.pending.cancel(token)
        for w in self.replica.take_all():
            self._reply(w.ident, m.ProduceReply(id=w.req_id, code=ErrorCode.BROKER_SHUTTING_DOWN, partition=w.partition,
                                               message="broker stopped before the slave confirmed; durable on the master only"))
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
            ident = frames[0].bytes
            decoded = self._decode(ident, frames[1:])
            if decoded is not None:
                self._refuse(ident, decoded[0], BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "broker is stopping"))

    def _reply(self, ident: bytes, reply, payloads=()) -> None:
        try:
            self.client.send_multipart([ident, *codec.encode_reply(reply, payloads)], copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
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
                self._reply(ident, _error_reply(req, e))
            return
        line = self.drops.note(e.code, e.message, time.monotonic())
        if line:
            log.warning("%s", line)

    def _handle(self, ident: bytes, frames) -> None:
        decoded = self._decode(ident, frames)
        if decoded is None:
            return
        req, payload = decoded
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
                    self._reply(ident, self._metadata(req))
                case m.ListOffsets():
                    self._reply(ident, m.ListOffsetsReply(id=req.id, offset=self._list_offsets(req)))
                case m.Stats():
                    self._reply(ident, m.StatsReply(id=req.id, stats=self._stats()))
                case m.Promote():
                    if not req.force:
                        self._refuse_promotion_while_master_answers()
                    reply = self._ask(control.Promote(), timeout_ms=60_000)
                    self._reply(ident, m.PromoteReply(id=req.id, code=reply.code, message=reply.message,
                                                      leader_epoch=reply.epoch))
                case m.CreateTopic():
                    n = self.ensure_topic(req.topic, req.partitions, explicit=True, if_not_exists=req.if_not_exists)
                    self._reply(ident, m.CreateTopicReply(id=req.id, partitions=n))
                case _:
                    raise BrokerError(ErrorCode.BAD_REQUEST, f"unsupported request {type(req).__name__}")
        except BrokerError as e:
            self._refuse(ident, req, e)
        except Exception as e:  # a bug must not take every other client down
            log.exception("request %s failed", type(req).__name__)
            self._refuse(ident, req, BrokerError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

    # -- produce ----------------------------------------------------------------

    def _produce(self, ident: bytes, req, batches: list[memoryview]) -> None:
        if self.stopping:
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, "broker is stopping")
        if self.view.role == "slave":
            raise BrokerError(ErrorCode.NOT_LEADER, f"this broker is a slave of {self.cfg.replication.master}; "
                                                    "produce to the master (or promote this broker)")
        replicas = req.acks == -1 and self.replica.sync(self.view.role)
        if replicas:
            self.replica.check_enough()
        partition = req.partition
        if partition < 0:
            partition = next(self._rr) % self.partitions_of(req.topic)
        self.check_partition(req.topic, partition)
        if self.pending.full():
            raise BrokerError(ErrorCode.BUSY, f"{len(self.pending)} requests already wait for the disk; retry later")
        topic_b = req.topic.encode()
        size = handoff.record_size(topic_b, sum(b.nbytes for b in batches))
        waiting = None
        if req.acks != 0:
            waiting = Waiting(ident, req.id, partition, time.monotonic() + req.timeout_ms / 1000.0,
                              replicas=replicas, key=handoff.tp_key(req.topic, partition))
        token = self.pending.add(waiting)
        ring = self.rings[handoff.owner_of(req.topic, partition, len(self.rings))]
        try:
            buf = ring.claim(size, handoff.PRODUCE, self._timeout)
        except RingFull:
            self.pending.cancel(token)
            raise BrokerError(ErrorCode.BUSY, "the writer's ring stayed full; the disk is behind, retry later") from None
        except (PeerDead, RingClosed) as e:
            self.pending.cancel(token)
            raise BrokerError(ErrorCode.BROKER_SHUTTING_DOWN, f"the partition's writer is gone ({e})") from None
        try:
            handoff.write_record(buf, token, topic_b, partition, batches, epoch=self.view.leader_epoch)
        except BaseException:
            ring.abort()
            self.pending.cancel(token)
            raise
        ring.commit()

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
            for token, code, message, offsets, last in c.done:
                w = self.pending.complete(token)
                if w is None:
                    continue
                if code == 0 and w.replicas:
                    w.offsets, w.last = offsets, last
                    if not self.replica.hold(w):
                        self._reply(w.ident, m.ProduceReply(id=w.req_id, base_offsets=offsets, partition=w.partition))
                    continue
                self._reply(w.ident, m.ProduceReply(id=w.req_id, code=code, message=message,
                                                   base_offsets=offsets, partition=w.partition))
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
            released, failed = self.replica.update(ipc_replica.state_decoder.decode(raw))
            self._bound_fetches()
            for w in released:
                self._reply(w.ident, m.ProduceReply(id=w.req_id, base_offsets=w.offsets, partition=w.partition))
            for w in failed:
                self._reply(w.ident, m.ProduceReply(id=w.req_id, code=ErrorCode.NOT_ENOUGH_REPLICAS, partition=w.partition,
                                                   message="durable on the master, but the slave fell out of sync before "
                                                           "confirming it (min_insync_replicas not met)"))

    def _drain_slave_acks(self) -> None:
        """A slave's writer made a flush durable: release what that covers."""
        while True:
            try:
                raw = self.slave_acks.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                ack = ipc_replica.slave_ack_decoder.decode(raw)
            except msgspec.DecodeError:
                self.replica.direct_refused += 1  # a stranger's bytes: counted, never trusted
                continue
            if self.view.role != "master":
                self.replica.direct_refused += 1
                continue
            for w in self.replica.direct_ack(ack.slave_id, ack.epoch, ack.durable, self.view.leader_epoch):
                self._reply(w.ident, m.ProduceReply(id=w.req_id, base_offsets=w.offsets, partition=w.partition))
            self._bound_fetches()

    def _refuse_promotion_while_master_answers(self) -> None:
        """A slave's master that still answers as a master would go on taking
        produce requests beside the promoted slave: two masters.  Blocks this
        acceptor for up to replication.promote_probe_ms (a promotion is rare,
        and it blocks anyway while the supervisor promotes)."""
        r = self.cfg.replication
        if self.view.role != "slave" or not r.master:
            return  # the supervisor answers "not a slave"
        rep = master_answering(self.ctx, r.master, r.promote_probe_ms, self.cfg.broker.broker_id)
        if rep is not None:
            raise BrokerError(ErrorCode.BAD_REQUEST,
                              f"the master at {r.master} (broker {rep.broker_id}, epoch {rep.leader_epoch}) still answers "
                              "as master: promoting this slave now would make two masters (docs/replication.md, "
                              "\"Two masters\"). Stop that broker first, or promote with --force")

    def _bound_fetches(self) -> None:
        """Keep consumers of a master to what the in-sync slaves hold
        (replication.fetch_bound), then answer the long polls that lets go."""
        bound = None
        if self._fetch_replicated and self.view is not None and self.view.role == "master" and self.replica.insync:
            bound = self.replica.replicated
        self.fetch.bound = bound
        keys = self.fetch.parked_keys()
        if keys:
            for p in self.fetch.woken(keys):
                self._serve_fetch(p.ident, p.req)

    def _stats(self) -> dict:
        out = {
            "role": self.view.role,
            "leader_epoch": self.view.leader_epoch,
            "acceptor": self.index,
            "pid": os.getpid(),
            "pending_requests": len(self.pending),
            "topics": len(self.view.topics),
            "partitions": len(self.fetch.hwm),
            "messages": sum(self.fetch.hwm.values()) - sum(self.fetch.log_start.values()),
        }
        out.update(self.replica.stats)
        # until the replicator's first broadcast: the supervisor's role, not the
        # flags' (a promoted broker restarted with slave flags is a master)
        out.setdefault("replication_role", self.view.role)
        if self._fetch_replicated:
            out["fetch_bound"] = "replicated" if self.fetch.bound is not None else "durable (no slave in sync)"
            out["messages_awaiting_replication"] = self.fetch.held_back()
        if self.slave_acks is not None:
            out["replication_direct_acks"] = self.replica.direct_acks
            out["replication_direct_acks_refused"] = self.replica.direct_refused
        if self.view.promoted_from:
            out["promoted_from"] = self.view.promoted_from
        if self.view.replication:  # the metadata's full list: [fetch, ack, each writer's PUB]
            out["replication_endpoints"] = " ".join(self.view.replication)
        return out

    def _expire(self, now: float) -> None:
        for w in self.replica.expired(now):
            self._reply(w.ident, m.ProduceReply(id=w.req_id, code=ErrorCode.REQUEST_TIMED_OUT, partition=w.partition,
                                               message="durable on the master; the slave did not confirm within timeout_ms"))
        for _, w in self.pending.expired(now):
            self._reply(w.ident, m.ProduceReply(id=w.req_id, code=ErrorCode.REQUEST_TIMED_OUT,
                                               message="not durable within timeout_ms; the batch may still be written",
                                               partition=w.partition))
        for p in self.fetch.timed_out(now):
            self._serve_fetch(p.ident, p.req)

    # -- fetch and offsets -----------------------------------------------------------

    def _fetch(self, ident: bytes, req: m.Fetch) -> None:
        self.check_partition(req.topic, req.partition, auto=False)
        # parks a long poll that finds less than min_bytes (net/fetch.py)
        if not self.fetch.start(ident, req, time.monotonic(), wait=not self.stopping):
            self._serve_fetch(ident, req)

    def _serve_fetch(self, ident: bytes, req: m.Fetch) -> None:
        try:
            data, hwm, start = self.fetch.answer(req)
        except BrokerError as e:
            self._reply(ident, _error_reply(req, e))
            return
        self._reply(ident, m.FetchReply(id=req.id, high_watermark=hwm, log_start_offset=start), [data])

    def _answer_parked_fetches(self) -> None:
        for p in self.fetch.all_parked():
            self._serve_fetch(p.ident, p.req)

    def _list_offsets(self, req: m.ListOffsets) -> int:
        self.check_partition(req.topic, req.partition, auto=False)
        key = handoff.tp_key(req.topic, req.partition)
        hwm = self.fetch.visible(key)  # "latest" is where consumers can read up to
        if req.spec == m.EARLIEST:
            return self.fetch.log_start.get(key, 0)
        if req.spec == m.LATEST:
            return hwm
        off = self.fetch.reader(req.topic, req.partition).offset_for_timestamp(req.spec, hwm)
        return hwm if off is None else off

    def _metadata(self, req: m.Metadata) -> m.MetadataReply:
        names = list(self.view.topics) if req.topics is None else req.topics
        topics = []
        for name in names:
            try:
                n = self.partitions_of(name, auto=self.cfg.broker.auto_create_topics)
            except BrokerError as e:
                topics.append(m.TopicMetadata(name=name, code=e.code))
                continue
            parts = [m.PartitionMetadata(partition=p, leader=self.view.leader_id, leader_epoch=self.view.leader_epoch)
                     for p in range(n)]
            topics.append(m.TopicMetadata(name=name, partitions=parts))
        return m.MetadataReply(id=req.id, cluster_id=self.view.cluster_id, broker_id=self.view.broker_id,
                               acceptors=self.view.acceptors, topics=topics,
                               max_batch_bytes=self.cfg.broker.max_batch_bytes,
                               max_request_bytes=self.cfg.broker.max_request_bytes,
                               role=self.view.role, replication=self.view.replication,
                               replication_version=ipc_replica.VERSION if self.view.replication else 0,
                               replication_acks=self.view.replication_acks, leader_epoch=self.view.leader_epoch)


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
