"""The slave's replicator: follow a master, byte for byte.

Connect: learn the master's replication endpoints from its metadata, then
handshake (cluster id and epoch are checked both ways; a stranger or a
stale master is refused).  Truncate: for each local partition ask where its
latest epoch ends on the master and cut a divergent tail there (never
below).  Stream: take committed batches from the PUB stream, hand them to
the local writers through the rings (``REPLICA`` records keep the master's
offsets and epochs), and report the durable offsets back over PUSH.  A
batch that does not start where the local log ends is a gap (PUB drops
under its high-water mark and for slow joiners): that partition switches
to catch-up reads from the master's files and skips nothing.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import zmq
from msgspec.structs import astuple

from hpbroker import batch
from hpbroker.io.epochs import EpochCache
from hpbroker.io.layout import partition_dir
from hpbroker.ipc import completions, control, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.replication import messages as rm
from hpbroker.replication.divergence import plan_cut
from hpbroker.replication.pacing import ByteRate
from hpbroker.ring import RingFull, SharedRing
from hpbroker.sockets import drain

log = logging.getLogger("hpbroker.replication")


class Refusal(RuntimeError):
    pass


def split_batches(frames) -> list[memoryview]:
    """The batches of a PUB message's chunk frames, each a chunk of whole
    batches laid end to end.  A chunk that does not end on a batch boundary
    yields its whole batches and then the rest as one (short) piece, which
    the batch check refuses."""
    out = []
    for f in frames:
        mv = f.buffer if isinstance(f, zmq.Frame) else memoryview(f)
        end = 0
        for pos, h in batch.iter_batches(mv):
            end = pos + h.batch_length
            out.append(mv[pos:end])
        if end < len(mv):
            out.append(mv[end:])
    return out


class Slave:
    def __init__(self, cfg, ctx: zmq.Context, data_dir: str, instance: str, ring_names: list[str],
                 completions_ep: str, state_ep: str, control_ep: str, max_epoch: int, clock=time.monotonic):
        self.cfg = cfg
        self.ctx = ctx
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.writers = len(ring_names)
        r = cfg.ring
        self.shared = [SharedRing.attach(instance, n, heartbeat_ms=r.heartbeat_ms) for n in ring_names]
        self.rings = [s.writer(spin_us=r.spin(), full_timeout_ms=r.full_timeout_ms, dead_after_ms=r.dead_after_ms)
                      for s in self.shared]
        self.comp = ctx.socket(zmq.PULL)
        self.comp.bind(completions_ep)
        self.state_pub = ctx.socket(zmq.PUB)
        self.state_pub.bind(state_ep)
        self.control = ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(control_ep)
        self.max_epoch = max_epoch
        self.master_epoch = -1
        self.state = "connecting"
        self.detail = ""
        self.sockets: dict[str, zmq.Socket] = {}
        self.expected: dict[str, int] = {}  # next offset to hand to the writer
        self.durable: dict[str, int] = {}  # what the local writers made durable
        self.master_hwm: dict[str, int] = {}
        self.catching: deque[str] = deque()  # partitions waiting for a catch-up read
        self.catch_inflight: str | None = None
        self.paused: set[str] = set()  # a writer refused a batch: wait for in-flight ones, then catch up
        self.inflight: dict[str, int] = {}
        self.tokens: dict[int, str] = {}
        self.next_token = 1
        self.heard_from: set[int] = set()
        self.known_topics: dict[str, int] = {}
        self.gaps = 0
        self.catch_up_reads = 0  # CatchUp requests sent (history, gaps, lost PUB messages)
        self.catch_up_bytes = 0  # bytes those reads brought
        rc = cfg.replication
        self.pace = ByteRate(rc.catchup_rate_bytes, rc.catchup_bytes, clock)  # replication.catchup_rate_bytes
        self.throttled_s = 0.0  # how long reads that were due waited for the rate
        self._held_since: float | None = None
        self.stopped: dict[str, str] = {}  # partitions not followed any more, and why
        self._stalled: dict[str, int] = {}
        self.stopping = False
        self._ack_dirty = True
        self._last_hello_reply = 0.0
        self._received = 0
        self._polled: tuple = ()
        self._acking_to: list[str] = []  # where the local writers report their flushes
        self._poll: zmq.Poller | None = None

    # -- writer side --------------------------------------------------------------------

    def await_writers(self, timeout_s: float = 60.0) -> None:
        deadline = self.clock() + timeout_s
        while len(self.heard_from) < self.writers:
            if self.clock() > deadline:
                raise RuntimeError("the local writers did not report their partitions")
            if self.comp.poll(100):
                self._drain_completions()
        for k, v in self.durable.items():
            self.expected.setdefault(k, v)

    def _drain_completions(self) -> None:
        for frame in drain(self.comp, copy=False):
            c = completions.decoder.decode(frame.buffer)
            self.heard_from.add(c.writer)
            for token, code, message, offsets, last in c.done:
                key = self.tokens.pop(token, None)
                if key is None:
                    continue
                self.inflight[key] -= 1
                if code == ErrorCode.PARTITION_FENCED:
                    log.error("not following %s: the local partition is fenced (%s)", key, message)
                    self.stopped[key] = f"local partition fenced: {message}"
                elif code:
                    log.warning("local writer refused replicated data for %s: %s; catching up", key, message)
                    self.paused.add(key)
            for k, v in c.hwm.items():
                if self.durable.get(k) != v:
                    self.durable[k] = v
                    self._ack_dirty = True
            for key in [k for k in self.paused if not self.inflight.get(k)]:
                # nothing of this partition is in flight: its log ends at its durable offset
                self.paused.discard(key)
                self.expected[key] = self.durable.get(key, 0)
                self._want_catch_up(key)

    def _send_ring(self, kind: int, topic: str, partition: int, frames, arg: int = 0) -> None:
        key = handoff.tp_key(topic, partition)
        token = self.next_token
        self.next_token += 1
        tb = topic.encode()
        size = handoff.record_size(tb, sum(len(f) for f in frames))
        ring = self.rings[handoff.owner_of(topic, partition, self.writers)]
        while True:
            try:
                buf = ring.claim(size, kind, 0.5)
                break
            except RingFull:
                if self.stopping:
                    raise
                self._drain_completions()
        try:
            handoff.write_record(buf, token, tb, partition, frames, arg=arg)
        except BaseException:
            ring.abort()
            raise
        ring.commit()
        self.tokens[token] = key
        self.inflight[key] = self.inflight.get(key, 0) + 1

    def _tell_writers_ack_to(self, endpoints: list[str]) -> None:
        """Have the local writers report each flush straight to the master's
        acceptors (or stop, with no endpoints).  Best effort: the SlaveAck
        this process sends stays the authoritative report."""
        if not endpoints and not self._acking_to:
            return
        payload = handoff.ack_to_encoder.encode(handoff.AckTo(epoch=self.master_epoch, slave_id=self.cfg.broker.broker_id,
                                                               endpoints=list(endpoints)))
        size = handoff.record_size(b"", len(payload))
        for ring in self.rings:
            try:
                buf = ring.claim(size, handoff.ACK_TO, 0.5)
            except Exception as e:  # noqa: BLE001 - a full or closed ring: the replicator's acks still flow
                log.warning("could not tell a writer where to report its flushes (%s)", e)
                continue
            handoff.write_record(buf, 0, b"", 0, [payload])
            ring.commit()
        self._acking_to = list(endpoints)

    def _forward(self, topic: str, partition: int, views: list[memoryview]) -> bool:
        """Hand whole batches to the writer, skipping what it already has;
        a batch past the expected offset means a gap.

        A batch of an epoch newer than the handshake's means the master
        restarted (a new reign) and its fixed ports took this slave's sockets
        back before a handshake did.  Nothing of it is appended: -> False,
        and the caller handshakes again, so truncation by epoch runs first
        (appended now, a batch of the new reign could land right after a tail
        the master no longer has, and that tail would never be cut)."""
        key = handoff.tp_key(topic, partition)
        if key in self.stopped:
            return True
        exp = self.expected.get(key, 0)
        out = []
        for v in views:
            if len(v) < batch.HEADER_SIZE:
                log.error("%s: the master sent %d bytes that are no whole batch after offset %d; not replicating "
                          "this partition past it", key, len(v), exp)
                self.stopped[key] = f"a torn batch from the master after offset {exp}"
                break
            if batch.peek_epoch(v) > self.master_epoch:
                log.warning("%s: the master sent a batch of epoch %d, newer than the handshake's %d: the master "
                            "restarted; handshaking again before appending any of it", key, batch.peek_epoch(v),
                            self.master_epoch)
                return False
            base = batch.peek_base_offset(v)
            end = base + batch.peek_count(v)
            if end <= exp:
                continue  # already here
            if base != exp:
                self.gaps += 1
                self._want_catch_up(key)
                break
            try:
                # the CRC, not the record table: the master's acceptor checked
                # that, and the CRC proves these are the bytes it checked
                batch.check_batch(v, 0, len(v), table=False)
            except batch.CorruptBatch as e:
                # never copy corruption: stop following this partition here
                log.error("%s: the master sent a corrupt batch at offset %d (%s); not replicating this "
                          "partition past offset %d until the master's copy is repaired", key, base, e, exp)
                self.stopped[key] = f"corrupt batch from the master at offset {base}"
                break
            out.append(v)
            exp = end
        if out:
            self._send_ring(handoff.REPLICA, topic, partition, out)
            self.expected[key] = exp
            self._received += len(out)
        return True

    # -- master side ----------------------------------------------------------------------

    def _socket(self, name: str, kind: int, *endpoints: str) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if kind == zmq.SUB:
            s.setsockopt(zmq.SUBSCRIBE, b"B")
            s.setsockopt(zmq.RCVHWM, self.cfg.replication.pub_hwm)
        for endpoint in endpoints:
            s.connect(endpoint)
        self.sockets[name] = s
        return s

    def _close_master(self) -> None:
        if not self.stopping:
            self._tell_writers_ack_to([])
        for s in self.sockets.values():
            s.close(0)
        self.sockets.clear()
        self.catching.clear()
        self.catch_inflight = None
        self._end_hold()

    def _request(self, msg, timeout_ms: int = 5000):
        s = self.sockets["fetch"]
        s.send(rm.encoder.encode(msg))
        deadline = self.clock() + timeout_ms / 1000
        while self.clock() < deadline:
            if s.poll(100):
                frames = s.recv_multipart()
                reply = rm.from_master.decode(frames[0])
                if isinstance(reply, rm.CatchUpReply):
                    self._on_catch_up(reply, frames[1] if len(frames) > 1 else b"")
                    continue
                return reply
            self._drain_completions()
        raise TimeoutError(f"the master did not answer {type(msg).__name__}")

    def connect(self) -> None:
        """Metadata, handshake, truncation by epoch; raises on failure."""
        self._close_master()
        boot = self._socket("boot", zmq.DEALER, self.cfg.replication.master)
        boot.send_multipart(codec.encode_request(m.Metadata(id=1, topics=[])))
        if not boot.poll(2000):
            raise TimeoutError(f"no answer from the master at {self.cfg.replication.master}")
        rep, _ = codec.decode_reply(boot.recv_multipart())
        if not isinstance(rep, m.MetadataReply) or len(rep.replication) < 3 or not all(rep.replication):
            raise Refusal(f"{self.cfg.replication.master} does not serve replication (is it a master?)")
        if rep.replication_version != ipc_replica.VERSION:
            raise Refusal(f"{self.cfg.replication.master} speaks replication version {rep.replication_version}, this "
                          f"slave {ipc_replica.VERSION}: run the same hpbroker release on master and slave")
        if rep.cluster_id != self.cfg.broker.cluster_id:
            raise Refusal(f"{self.cfg.replication.master} belongs to cluster {rep.cluster_id!r}, not {self.cfg.broker.cluster_id!r}")
        fetch, ack, *pubs = rep.replication  # one PUB per master writer
        self._socket("fetch", zmq.DEALER, fetch)
        self._socket("ack", zmq.PUSH, ack).setsockopt(zmq.SNDHWM, 100)
        w = self._request(rm.Hello(cluster_id=self.cfg.broker.cluster_id, slave_id=self.cfg.broker.broker_id,
                                   max_epoch=self.max_epoch))
        if isinstance(w, rm.Refused):
            raise Refusal(f"the master refused this slave: {w.reason}")
        if w.cluster_id != self.cfg.broker.cluster_id:
            raise Refusal(f"the master's cluster id {w.cluster_id!r} is not ours ({self.cfg.broker.cluster_id!r})")
        if w.epoch < self.max_epoch:
            raise Refusal(f"the master's epoch {w.epoch} is older than epoch {self.max_epoch} seen here: a stale master")
        self.master_epoch = w.epoch
        self.max_epoch = max(self.max_epoch, w.epoch)
        self._tell_supervisor(control.SeenEpoch(epoch=w.epoch, master_id=w.master_id, following=False))
        self._learn_topics(w.topics)
        self._truncate_divergent(set(w.reigns))
        self._tell_supervisor(control.SeenEpoch(epoch=w.epoch, master_id=w.master_id))
        self._socket("sub", zmq.SUB, *pubs)
        self.master_hwm.update(w.hwm)
        for k, v in w.hwm.items():
            if v > self.expected.get(k, 0):
                self._want_catch_up(k)
        self._tell_writers_ack_to(rep.replication_acks)
        self._last_hello_reply = self.clock()
        self.state, self.detail = "streaming", ""
        log.info("following master %s (broker %d, epoch %d)", self.cfg.replication.master, w.master_id, w.epoch)

    def _learn_topics(self, topics: dict[str, int]) -> None:
        """Create here every topic the master has (same partition count)."""
        for topic, n in topics.items():
            if self.known_topics.get(topic) != n:
                self._tell_supervisor(control.EnsureTopic(name=topic, partitions=n, explicit=True, if_not_exists=True))
                self.known_topics[topic] = n

    def _tell_supervisor(self, msg) -> None:
        self.control.send(control.encoder.encode(msg))
        if self.control.poll(10_000):
            self.control.recv()

    def _truncate_divergent(self, master_reigns: set[int]) -> None:
        """Cut each partition's divergent tail where its history parts from
        the master's (:mod:`hpbroker.replication.divergence`).  A cut of
        batches that a master this one never followed acknowledged is refused,
        all partitions or none, unless replication.unclean_truncation allows
        it (Kafka's unclean.leader.election.enable)."""
        caches: dict[str, EpochCache] = {}
        asks = []
        for key in sorted(self.expected):
            topic, _, p = key.rpartition("/")
            cache = EpochCache(partition_dir(str(self.data_dir), topic, int(p)), self.expected[key])
            if cache.latest_epoch >= 0:
                caches[key] = cache
                asks.append((topic, int(p), cache.latest_epoch))
        if not asks:
            return
        reply = self._request(rm.EpochEnd(asks=asks))
        cuts: list[tuple[str, int, int]] = []
        unclean: list[str] = []
        for topic, p, found, end, err in reply.answers:
            key = handoff.tp_key(topic, p)
            if err:
                log.error("not following %s: the master cannot say where its epochs end (%s)", key, err)
                self.paused.add(key)  # never truncate on a master's error
                continue
            exp = self.expected.get(key, 0)
            cut = plan_cut(caches[key].entries, exp, found, end, master_reigns)
            if cut.unclean:
                unclean.append(f"{key}: offsets {cut.offset}..{exp - 1} (epoch {', '.join(map(str, cut.strangers))})")
            if cut.offset < exp:
                cuts.append((topic, p, cut.offset))
        if unclean and not self.cfg.replication.unclean_truncation:
            raise Refusal(
                f"not following {self.cfg.replication.master}: it never led nor followed epochs this broker holds "
                f"batches of, so following it would delete messages a master it never heard of acknowledged - "
                f"{'; '.join(unclean)}. To discard them, set replication.unclean_truncation = true here; to keep "
                f"them, promote this broker (hpbroker promote) and restart the other as its slave with "
                f"replication.unclean_truncation = true there (docs/replication.md, \"Two masters\")")
        if unclean:
            log.warning("unclean truncation (replication.unclean_truncation): cutting batches acknowledged by a "
                        "master this one never followed: %s", "; ".join(unclean))
        for topic, p, end in cuts:
            key = handoff.tp_key(topic, p)
            log.warning("%s: divergent tail from offset %d (where the master's history parts from this log); "
                        "truncating", key, end)
            self._send_ring(handoff.TRUNCATE, topic, p, [], arg=end)
            self.expected[key] = end
        deadline = self.clock() + 60
        while any(self.inflight.values()) and self.clock() < deadline:
            if self.comp.poll(100):
                self._drain_completions()

    def _want_catch_up(self, key: str) -> None:
        if key not in self.catching and key != self.catch_inflight and key not in self.paused and key not in self.stopped:
            self.catching.append(key)

    def _next_catch_up(self) -> None:
        if self.catch_inflight is not None or not self.catching or "fetch" not in self.sockets:
            return
        if self.pace.wait_s() > 0:
            if self._held_since is None:
                self._held_since = self.clock()
            return  # the loop comes back within its 50 ms poll and asks again
        self._end_hold()
        key = self.catching.popleft()
        topic, _, p = key.rpartition("/")
        self.catch_inflight = key
        self.catch_up_reads += 1
        self.sockets["fetch"].send(rm.encoder.encode(rm.CatchUp(
            topic=topic, partition=int(p), offset=self.expected.get(key, 0), max_bytes=self.cfg.replication.catchup_bytes)))

    def _end_hold(self) -> None:
        """A read held back by catchup_rate_bytes goes (or the connection ends): count the wait."""
        if self._held_since is not None:
            self.throttled_s += self.clock() - self._held_since
            self._held_since = None

    def _on_catch_up(self, reply: rm.CatchUpReply, data) -> None:
        key = handoff.tp_key(reply.topic, reply.partition)
        if key == self.catch_inflight:
            self.catch_inflight = None
        self.master_hwm[key] = max(self.master_hwm.get(key, 0), reply.hwm)
        if reply.error:
            log.error("catch-up of %s failed on the master: %s", key, reply.error)
            return
        self.catch_up_bytes += len(data)
        self.pace.spend(len(data))
        views = [memoryview(data)[pos : pos + h.batch_length] for pos, h in batch.iter_batches(data)]
        if views and not self._forward(reply.topic, reply.partition, views):
            self._handshake_again()
            return
        # PUB messages that arrived while this partition was catching up were
        # skipped: keep reading until the newest high watermark known.
        if views and self.expected.get(key, 0) < self.master_hwm[key]:
            self._want_catch_up(key)

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> None:
        self.await_writers()
        next_try = 0.0
        next_ack = 0.0
        next_hello = 0.0
        next_state = 0.0
        while not self.stopping:
            now = self.clock()
            if self.state != "streaming" and now >= next_try:
                try:
                    self.connect()
                except (Refusal, TimeoutError) as e:
                    self.state, self.detail = ("refused" if isinstance(e, Refusal) else "disconnected"), str(e)
                    log.warning("%s", e)
                    self._close_master()
                    next_try = now + (5.0 if isinstance(e, Refusal) else 1.0)
            events = dict(self._poller().poll(50))
            if self.comp in events:
                self._drain_completions()
            if self.state == "streaming":
                if self.sockets.get("sub") in events:
                    self._drain_sub()
                if self.sockets.get("fetch") in events:
                    self._drain_fetch()
                if self.state != "streaming":
                    continue  # handshaking again (a new reign, a refusal)
                self._next_catch_up()
                now = self.clock()
                if now >= next_hello:
                    self.sockets["fetch"].send(rm.encoder.encode(rm.Hello(
                        cluster_id=self.cfg.broker.cluster_id, slave_id=self.cfg.broker.broker_id, max_epoch=self.max_epoch)))
                    next_hello = now + 1.0
                if now - self._last_hello_reply > self.cfg.replication.replica_lag_max_ms / 1000.0:
                    self.state, self.detail = "disconnected", "the master stopped answering"
                    log.warning("lost the master at %s; reconnecting", self.cfg.replication.master)
                    self._close_master()
                elif (self._ack_dirty and not self._acking_to) or now >= next_ack:
                    # While the writers report each flush to the master's acceptors
                    # themselves, this report is the slower, authoritative one (in-sync
                    # state, lag): every ack_interval_ms is enough.
                    self._ack()
                    next_ack = now + self.cfg.replication.ack_interval_ms / 1000.0
            if now >= next_state:
                self._broadcast()
                next_state = now + 0.5

    def _poller(self) -> zmq.Poller:
        """The loop's poller, rebuilt only when the master's sockets change."""
        want = (self.sockets.get("sub"), self.sockets.get("fetch"))
        if self._polled != want:
            poller = zmq.Poller()
            poller.register(self.comp, zmq.POLLIN)
            for sock in want:
                if sock is not None:
                    poller.register(sock, zmq.POLLIN)
            self._polled, self._poll = want, poller
        return self._poll

    def _drain_sub(self) -> None:
        s = self.sockets["sub"]
        while True:
            try:
                frames = s.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            topic, partition, hwm = astuple(ipc_replica.feed_meta_decoder.decode(frames[1].buffer))
            key = handoff.tp_key(topic, partition)
            self.master_hwm[key] = max(self.master_hwm.get(key, 0), hwm)
            if key in self.paused or key in self.catching or key == self.catch_inflight:
                continue
            if not self._forward(topic, partition, split_batches(frames[2:])):
                self._handshake_again()
                return

    def _drain_fetch(self) -> None:
        s = self.sockets["fetch"]
        while True:
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = rm.from_master.decode(frames[0])
            if isinstance(reply, rm.CatchUpReply):
                self._on_catch_up(reply, frames[1] if len(frames) > 1 else b"")
                if "fetch" not in self.sockets:
                    return  # it carried a newer reign: handshaking again
            elif isinstance(reply, rm.Welcome):
                self._last_hello_reply = self.clock()
                if reply.epoch != self.master_epoch:
                    log.warning("the master's epoch changed (%d -> %d); handshaking again", self.master_epoch, reply.epoch)
                    self._handshake_again()
                    return
                stalled = self._stalled
                self._stalled = {}
                for k, v in reply.hwm.items():
                    self.master_hwm[k] = max(self.master_hwm.get(k, 0), v)
                    exp = self.expected.get(k, 0)
                    if exp < v:
                        # behind and no progress since the last keep-alive: the
                        # PUB message that would move it was lost; read it instead
                        if stalled.get(k) == exp and not self.inflight.get(k):
                            self._want_catch_up(k)
                        self._stalled[k] = exp
                self._learn_topics(reply.topics)
            elif isinstance(reply, rm.Refused):
                self.state, self.detail = "refused", reply.reason
                log.error("the master refused this slave: %s", reply.reason)
                self._close_master()
                return

    def _handshake_again(self) -> None:
        self.state = "connecting"
        self._close_master()

    def _ack(self) -> None:
        s = self.sockets.get("ack")
        if s is None:
            return
        try:
            s.send(ipc_replica.encoder.encode(ipc_replica.SlaveAck(slave_id=self.cfg.broker.broker_id, epoch=self.master_epoch,
                                                 durable=dict(self.durable))), zmq.NOBLOCK)
            self._ack_dirty = False
        except zmq.Again:
            pass

    def _broadcast(self) -> None:
        lag = sum(max(0, v - self.durable.get(k, 0)) for k, v in self.master_hwm.items())
        stats = {
            "replication_role": "slave",
            "replication_master": self.cfg.replication.master,
            "replication_state": self.state,
            "replication_detail": self.detail,
            "replication_master_epoch": self.master_epoch,
            "replication_lag_messages": lag,
            "replication_catching_up": len(self.catching) + (1 if self.catch_inflight else 0),
            "replication_received_batches": self._received,
            "replication_gaps": self.gaps,
            "replication_catch_up_reads": self.catch_up_reads,
            "replication_catch_up_bytes": self.catch_up_bytes,
            "replication_catch_up_throttled_s": round(self.throttled_s, 3),
            "replication_paused": len(self.paused),
            "replication_stopped_partitions": "; ".join(f"{k}: {v}" for k, v in sorted(self.stopped.items())),
        }
        self.state_pub.send(ipc_replica.encoder.encode(ipc_replica.ReplicaState(role="slave", insync=0, replicated={}, stats=stats)))

    def close(self) -> None:
        self._close_master()
        for s in self.shared:
            s.close()
