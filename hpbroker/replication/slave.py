"""The slave's replicator: follow a master, byte for byte.

Connect: learn the master's replication endpoints from its metadata, then
handshake (cluster id and epoch are checked both ways; a stranger or a
stale master is refused: :mod:`~hpbroker.replication.handshake`).
Truncate: for each local partition ask where its latest epoch ends on the
master and cut a divergent tail there, never below
(:mod:`~hpbroker.replication.truncation`).  Stream: take committed batches
from the PUB stream and hand them to the local writers through the rings
(``REPLICA`` records keep the master's offsets and epochs;
:mod:`~hpbroker.replication.follow`, :mod:`~hpbroker.replication.writer_link`).
Catch up: a batch that does not start where the local log ends is a gap
(PUB drops under its high-water mark and for slow joiners): that partition
switches to paced reads from the master's files and skips nothing
(:mod:`~hpbroker.replication.catchup`, :mod:`~hpbroker.replication.stalls`).
Ack: report the durable offsets back over PUSH, and have the local writers
report each flush straight to the master's acceptors.

This module is the process's loop and wiring; :func:`open_slave` makes its
resources (rings, sockets) and the pieces above are tested without them.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Callable

import zmq
from msgspec.structs import astuple

from hpbroker.ipc import control, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.replication import messages as rm
from hpbroker.replication import truncation
from hpbroker.replication.catchup import CatchUp
from hpbroker.replication.follow import Follow
from hpbroker.replication.handshake import Refusal, check_metadata, check_welcome
from hpbroker.replication.master_link import MasterLink, split_batches
from hpbroker.replication.pacing import ByteRate
from hpbroker.replication.writer_link import WriterLink
from hpbroker.ring import RingFull, SharedRing
from hpbroker.sockets import drain, make_socket

__all__ = ["Refusal", "Slave", "open_slave", "split_batches"]  # split_batches: tests import it from here

log = logging.getLogger("hpbroker.replication")

HELLO_INTERVAL_S = 1.0  # keep-alives: the master's watermarks, and proof it still answers
TOPIC_ASK_S = 0.05  # a batch of an unknown topic asks for the master's topics at most this often
HOLD_BYTES = 64 << 20  # PUB messages of topics not registered yet, held until they are
STATE_INTERVAL_S = 0.5  # stats to this broker's acceptors


def open_slave(cfg, ctx: zmq.Context, data_dir: str, instance: str, ring_names: list[str], completions_ep: str,
               state_ep: str, control_ep: str, max_epoch: int, clock=time.monotonic, curve=None) -> "Slave":
    """A Slave over the broker's shared-memory rings and ``ipc://`` sockets;
    ``curve``: its CURVE client options for every socket to the master ([security])."""
    r = cfg.ring
    shared = [SharedRing.attach(instance, n, heartbeat_ms=r.heartbeat_ms) for n in ring_names]
    rings = [s.writer(spin_us=r.spin(), full_timeout_ms=r.full_timeout_ms, dead_after_ms=r.dead_after_ms)
             for s in shared]
    writers = WriterLink(rings, make_socket(ctx, zmq.PULL, bind=completions_ep), on_close=[s.close for s in shared])
    return Slave(cfg, writers, make_socket=functools.partial(make_socket, ctx, curve=curve),
                 state_pub=make_socket(ctx, zmq.PUB, bind=state_ep),
                 control_sock=make_socket(ctx, zmq.DEALER, connect=control_ep),
                 data_dir=data_dir, max_epoch=max_epoch, clock=clock)


class Slave:
    def __init__(self, cfg, writers: WriterLink, *, make_socket: Callable[..., zmq.Socket], state_pub: zmq.Socket,
                 control_sock: zmq.Socket, data_dir: str, max_epoch: int, clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.data_dir = Path(data_dir)
        self.writers = writers  # the local writers' rings and completions
        self.make_socket = make_socket  # for the master's sockets, new at each connection
        self.state_pub = state_pub  # stats to this broker's acceptors
        self.control = control_sock  # to the supervisor: topics to create, epochs seen
        self.master: MasterLink | None = None  # the connection to the master, while there is one
        rc = cfg.replication
        self.catchup = CatchUp(ByteRate(rc.catchup_rate_bytes, rc.catchup_bytes, clock), clock)
        self.follow = Follow(self._write, self.catchup)
        self.max_epoch = max_epoch  # the newest epoch this broker has seen
        self.master_epoch = -1  # the epoch the handshake agreed on
        self.state = "connecting"
        self.detail = ""
        self.known_topics: dict[str, int] = {}  # topics created here after the master's
        self.stopping = False
        self._last_hello_reply = 0.0
        self._topics_asked = 0.0
        self._held: dict[str, list] = {}  # topic -> PUB messages that arrived before the topic was registered here
        self._held_bytes = 0
        self._polled: tuple = ()
        self._poll: zmq.Poller | None = None

    # -- the local writers ----------------------------------------------------------------

    def await_writers(self, timeout_s: float = 60.0) -> None:
        deadline = self.clock() + timeout_s
        while not self.writers.all_heard():
            if self.clock() > deadline:
                raise RuntimeError("the local writers did not report their partitions")
            if self.writers.poll(100):
                self._drain_completions()
        self.follow.start_at_durable()

    def _drain_completions(self) -> None:
        for c in self.writers.completions():
            self.follow.on_completions(c)

    def _write(self, kind: int, token: int, topic: str, partition: int, frames: list, arg: int = 0) -> None:
        """One ring record; while the ring is full, drain completions and try again (unless stopping)."""
        while True:
            try:
                return self.writers.write(kind, token, topic, partition, frames, arg)
            except RingFull:
                if self.stopping:
                    raise
                self._drain_completions()

    def _settle(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until the writers answered every record sent."""
        deadline = self.clock() + timeout_s
        while self.follow.appending() and self.clock() < deadline:
            if self.writers.poll(100):
                self._drain_completions()

    def _tell_writers_ack_to(self, endpoints: list[str]) -> None:
        self.writers.ack_to(self.master_epoch, self.cfg.broker.broker_id, endpoints)

    # -- connect, truncate ----------------------------------------------------------------

    def connect(self) -> None:
        """Metadata, handshake, truncation by epoch; raises on failure."""
        self._close_master()
        rc, cluster_id = self.cfg.replication, self.cfg.broker.cluster_id
        link = self.master = MasterLink(self.make_socket, rc.master, rc.pub_hwm, self.clock)
        link.stop_requested = lambda: self.stopping
        ends = check_metadata(link.metadata(), rc.master, cluster_id)
        link.open(ends.fetch, ends.ack)
        w = check_welcome(self._request(self._hello()), cluster_id, self.max_epoch)
        self.master_epoch = w.epoch
        self.max_epoch = max(self.max_epoch, w.epoch)
        self._tell_supervisor(control.SeenEpoch(epoch=w.epoch, master_id=w.master_id, following=False))
        self._learn_topics(w.topics)
        self._truncate_divergent(set(w.reigns))
        self._tell_supervisor(control.SeenEpoch(epoch=w.epoch, master_id=w.master_id))
        link.subscribe(ends.pubs)
        self.follow.on_handshake(w.hwm)
        self._tell_writers_ack_to(ends.acceptor_acks)
        self._last_hello_reply = self.clock()
        self.state, self.detail = "streaming", ""
        log.info("following master %s (broker %d, epoch %d)", rc.master, w.master_id, w.epoch)

    def _hello(self) -> rm.Hello:
        b = self.cfg.broker
        return rm.Hello(cluster_id=b.cluster_id, slave_id=b.broker_id, max_epoch=self.max_epoch)

    def _request(self, msg):
        return self.master.request(msg, on_catch_up=self._on_catch_up, idle=self._drain_completions)

    def _learn_topics(self, topics: dict[str, int]) -> list[str]:
        """Create here every topic the master has (same partition count);
        -> the topics new here.  The supervisor has registered each one
        (topics.json) when this returns, so a batch of it is appended, and
        reported durable, only once this broker knows the topic: promoted,
        it serves every record it acknowledged."""
        new = []
        for topic, n in topics.items():
            if self.known_topics.get(topic) != n:
                self._tell_supervisor(control.EnsureTopic(name=topic, partitions=n, explicit=True, if_not_exists=True))
                self.known_topics[topic] = n
                new.append(topic)
        return new

    def _hold(self, topic: str, partition: int, chunks: list) -> None:
        """Keep a PUB message of a topic not registered here until it is
        (:meth:`_replay`), and ask the master for its topics.  Past
        HOLD_BYTES in all, it is dropped: a gap, caught up once the topic
        is registered."""
        size = sum(len(c.buffer) for c in chunks)
        if self._held_bytes + size <= HOLD_BYTES:
            self._held.setdefault(topic, []).append((partition, chunks))
            self._held_bytes += size
        self._ask_for_topics()

    def _replay(self, topic: str) -> bool:
        """Forward what :meth:`_hold` kept of ``topic``, now registered; False
        when a batch of a newer reign means handshaking again."""
        for partition, chunks in self._held.pop(topic, []):
            self._held_bytes -= sum(len(c.buffer) for c in chunks)
            if self.follow.streams(topic, partition, 0) and \
                    not self.follow.forward(topic, partition, split_batches(chunks), self.master_epoch):
                self._handshake_again()
                return False
        return True

    def _ask_for_topics(self) -> None:
        """A batch of a topic not registered here arrived: ask the master for
        its topics now (a keep-alive Hello; the Welcome lists them) rather
        than at the next keep-alive, at most every TOPIC_ASK_S."""
        now = self.clock()
        if self.master is not None and now - self._topics_asked >= TOPIC_ASK_S:
            self._topics_asked = now
            self.master.send(self._hello())

    def _tell_supervisor(self, msg) -> None:
        self.control.send(control.encoder.encode(msg))
        if self.control.poll(10_000):
            self.control.recv()

    def _truncate_divergent(self, master_reigns: set[int]) -> None:
        """Cut each partition's divergent tail where its history parts from
        the master's (:mod:`hpbroker.replication.truncation`); raises
        :class:`Refusal` for an unclean cut that replication.unclean_truncation
        does not allow."""
        rc = self.cfg.replication
        caches = truncation.local_epochs(self.data_dir, self.follow.expected)
        if not caches:
            return
        reply = self._request(rm.EpochEnd(asks=truncation.asks(caches)))
        plan = truncation.plan(reply.answers, caches, self.follow.expected, master_reigns)
        for key, err in plan.unanswered:
            log.error("not following %s: the master cannot say where its epochs end (%s)", key, err)
            self.follow.paused.add(key)  # never truncate on a master's error
        if plan.unclean and not rc.unclean_truncation:
            raise Refusal(truncation.refusal(rc.master, plan.unclean))
        if plan.unclean:
            log.warning("unclean truncation (replication.unclean_truncation): cutting batches acknowledged by a "
                        "master this one never followed: %s", "; ".join(plan.unclean))
        for topic, p, end in plan.cuts:
            log.warning("%s: divergent tail from offset %d (where the master's history parts from this log); "
                        "truncating", handoff.tp_key(topic, p), end)
            self.follow.truncate(topic, p, end)
        self._settle(60)

    def _close_master(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        if not self.stopping:
            self._tell_writers_ack_to([])
        if self.master is not None:
            self.master.close()
            self.master = None
        self.catchup.reset()

    def _handshake_again(self) -> None:
        self.state = "connecting"
        self._close_master()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        self.await_writers()
        next_try = next_ack = next_hello = next_state = 0.0
        while not self.stopping:
            now = self.clock()
            if self.state != "streaming" and now >= next_try:
                next_try = self._try_connect(now, next_try)
            events = dict(self._poller().poll(50))
            if self.writers.comp in events:
                self._drain_completions()
            if self.state == "streaming":
                if self.master.sub in events:
                    self._drain_sub()
                if self.state == "streaming" and self.master.fetch in events:
                    self._drain_fetch()
                if self.state != "streaming":
                    continue  # handshaking again (a new reign, a refusal)
                self._next_catch_up()
                now = self.clock()
                if now >= next_hello:
                    self.master.send(self._hello())
                    next_hello = now + HELLO_INTERVAL_S
                if now - self._last_hello_reply > self.cfg.replication.replica_lag_max_ms / 1000.0:
                    self.state, self.detail = "disconnected", "the master stopped answering"
                    log.warning("lost the master at %s; reconnecting", self.cfg.replication.master)
                    self._close_master()
                elif (self.follow.durable_changed and not self.writers.acking_to) or now >= next_ack:
                    # While the writers report each flush to the master's acceptors
                    # themselves, this report is the slower, authoritative one (in-sync
                    # state, lag): every ack_interval_ms is enough.
                    self._ack()
                    next_ack = now + self.cfg.replication.ack_interval_ms / 1000.0
            if now >= next_state:
                self._broadcast()
                next_state = now + STATE_INTERVAL_S

    def _try_connect(self, now: float, next_try: float) -> float:
        """Connect; -> when to try again if it failed."""
        try:
            self.connect()
        except (Refusal, TimeoutError) as e:
            self.state, self.detail = ("refused" if isinstance(e, Refusal) else "disconnected"), str(e)
            log.warning("%s", e)
            self._close_master()
            return now + (5.0 if isinstance(e, Refusal) else 1.0)
        return next_try

    def _poller(self) -> zmq.Poller:
        """The loop's poller, rebuilt only when the master's sockets change."""
        want = (self.master.sub, self.master.fetch) if self.master is not None else (None, None)
        if self._polled != want:
            poller = zmq.Poller()
            poller.register(self.writers.comp, zmq.POLLIN)
            for sock in want:
                if sock is not None:
                    poller.register(sock, zmq.POLLIN)
            self._polled, self._poll = want, poller
        return self._poll

    # -- stream, catch up -----------------------------------------------------------------

    def _drain_sub(self) -> None:
        for frames in drain(self.master.sub, multipart=True, copy=False):
            topic, partition, hwm = astuple(ipc_replica.feed_meta_decoder.decode(frames[1].buffer))
            if not self.follow.streams(topic, partition, hwm):
                continue
            if topic not in self.known_topics:
                self._hold(topic, partition, frames[2:])
                continue
            if not self.follow.forward(topic, partition, split_batches(frames[2:]), self.master_epoch):
                self._handshake_again()
                return

    def _drain_fetch(self) -> None:
        for frames in drain(self.master.fetch, multipart=True):
            reply = rm.from_master.decode(frames[0])
            if isinstance(reply, rm.CatchUpReply):
                self._on_catch_up(reply, frames[1] if len(frames) > 1 else b"")
                if self.master is None:
                    return  # it carried a newer reign: handshaking again
            elif isinstance(reply, rm.Welcome):
                if not self._on_keepalive(reply):
                    return
            elif isinstance(reply, rm.Refused):
                self.state, self.detail = "refused", reply.reason
                log.error("the master refused this slave: %s", reply.reason)
                self._close_master()
                return

    def _on_keepalive(self, w: rm.Welcome) -> bool:
        """A Welcome to a keep-alive Hello; False when the master's epoch changed (handshaking again)."""
        self._last_hello_reply = self.clock()
        if w.epoch != self.master_epoch:
            log.warning("the master's epoch changed (%d -> %d); handshaking again", self.master_epoch, w.epoch)
            self._handshake_again()
            return False
        new = self._learn_topics(w.topics)
        self.follow.on_keepalive(w.hwm)
        for topic in new:  # what arrived while it was unknown here: held, or dropped (then caught up)
            if not self._replay(topic):
                return False
            for p in range(w.topics[topic]):
                self.follow.catch_up_if_behind(handoff.tp_key(topic, p))
        return True

    def _on_catch_up(self, reply: rm.CatchUpReply, data) -> None:
        if reply.topic not in self.known_topics:
            self.follow.catchup.answered(handoff.tp_key(reply.topic, reply.partition))
            self._ask_for_topics()  # read again once the topic is registered here
            return
        if not self.follow.on_catch_up(reply, data, self.master_epoch):
            self._handshake_again()

    def _next_catch_up(self) -> None:
        if self.master is None:
            return
        key = self.catchup.next_read()
        if key is None:
            return
        topic, _, p = key.rpartition("/")
        self.master.send(rm.CatchUp(topic=topic, partition=int(p), offset=self.follow.expected.get(key, 0),
                                    max_bytes=self.cfg.replication.catchup_bytes))

    # -- ack, stats -----------------------------------------------------------------------

    def _ack(self) -> None:
        if self.master is None:
            return
        ack = ipc_replica.SlaveAck(slave_id=self.cfg.broker.broker_id, epoch=self.master_epoch,
                                   durable=dict(self.follow.durable))
        if self.master.send_ack(ack):
            self.follow.durable_changed = False

    def _broadcast(self) -> None:
        f, c = self.follow, self.catchup
        stats = {
            "replication_role": "slave",
            "replication_master": self.cfg.replication.master,
            "replication_state": self.state,
            "replication_detail": self.detail,
            "replication_master_epoch": self.master_epoch,
            "replication_lag_messages": f.lag(),
            "replication_catching_up": c.pending,
            "replication_received_batches": f.received,
            "replication_gaps": f.gaps,
            "replication_catch_up_reads": c.reads,
            "replication_catch_up_bytes": c.bytes,
            "replication_catch_up_throttled_s": round(c.throttled_s, 3),
            "replication_paused": len(f.paused),
            "replication_stopped_partitions": "; ".join(f"{k}: {v}" for k, v in sorted(f.stopped.items())),
        }
        self.state_pub.send(ipc_replica.encoder.encode(ipc_replica.ReplicaState(role="slave", insync=0, replicated={},
                                                                                stats=stats)))

    def close(self) -> None:
        self._close_master()
        self.writers.close()
