"""The disk-writer process: rings in, appends and group commits, completions out.

A writer owns the partitions hashed to it (see
:func:`hpbroker.ipc.handoff.owner_of`) and is the only process that writes
their files.  Its loop:

1. drain every input ring (one per acceptor); each record is one produce
   request: append its batches (stamping offsets) and remember the token;
2. when no group-commit round is in flight and the policy says so, or the
   rings ran dry, start a round: every dirty partition is written and
   fdatasync'd (``durable`` mode) on the I/O threads while the loop goes on
   draining.  Rounds never overlap, so while the disk works the next round
   grows by itself: the batch size adapts to the load (the group commit of
   databases and of MetaQ's GroupCommitService);
3. tell each acceptor which of its tokens are now durable, at which base
   offsets, plus every changed high watermark;
4. sleep on the writer's doorbell semaphore until an acceptor rings or the
   next flush deadline comes.

A failed write or fsync fails every request waiting on that partition and
leaves the partition fenced; nothing is retried and then acknowledged.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import zmq

from hpbroker import batch
from hpbroker.procutil import child_setup, freeze_heap
from hpbroker.io import GroupCommit, PartitionFenced, Storage, StorageError
from hpbroker.io.epochs import EpochCache
from hpbroker.ipc import control, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.ring import Doorbell, PeerDead, ReaderGroup, RingClosed, SharedRing

from hpbroker.broker.completion_reporter import CompletionReporter
from hpbroker.broker.pending_request import PendingRequest, ReplicaGap, error_code

log = logging.getLogger("hpbroker.writer")

ARENA_BYTES = 2 << 20  # see Writer.arenas
STATE_EVERY_S = 1.0  # full watermark broadcast, so late or restarted acceptors catch up


class Writer:
    def __init__(self, index: int, storage: Storage, committer: GroupCommit, group: ReaderGroup,
                 reporter: CompletionReporter, *, feed=None, retention_check_s: float = 60.0, clock=time.monotonic):
        self.index = index
        self.storage = storage
        self.gc = committer
        self.group = group
        self.reporter = reporter
        self.pub = None  # PUB socket: each round straight to the slaves (bound by open_pub)
        self.open_pub = None  # binds self.pub, once a slave's writer is promoted (set by main)
        self.feed = feed  # PUSH socket to the replicator: what was published, for its lag accounting
        self.feed_on = False  # a master publishes; a slave starts to at promotion (SIGUSR2)
        # Batches a slave will be sent wait for their round to start here,
        # copied at append (the ring slot is reused once drained) and stamped,
        # end to end in a fixed-size buffer per partition (its "arena",
        # uninitialised numpy memory) rather than one allocation per batch.
        # An appended batch is listed in ``published`` as (key, arena, start, end).
        # ZeroMQ sends slices of an arena without copying while later
        # batches fill the rest of it (disjoint bytes); a full arena is left
        # to the garbage collector and a new one started.  An arena stays
        # alive while any slice of it waits in ZeroMQ's queue, so its size is
        # memory held beyond the bytes queued (8 MiB arenas added 78 MiB to
        # the master's RSS in the sync bench; docs/performance.md).
        self.arena_bytes = ARENA_BYTES
        self.arenas: dict[tuple[str, int], list] = {}  # key -> [arena memoryview, fill]
        self.published: list[tuple[tuple[str, int], memoryview, int, int]] = []
        self.in_round: dict[tuple[str, int], int] = {}  # bytes published by the round in flight, per partition
        self.note: dict[tuple[str, int], list] = {}  # key -> [high watermark, bytes]: the next note to the replicator (sent with held reports)
        self.clock = clock
        self.stopping = False
        self.retention_check_s = retention_check_s
        # reader -> its record handler (which knows the sender it comes from)
        self.handlers = {r: (lambda t, b, a=a: self.on_record(a, t, b)) for a, r in enumerate(group.readers)}
        self.epochs: dict[tuple[str, int], EpochCache] = {}
        self.io_done = False  # set by the I/O thread when a pipelined flush finished
        self.bell_post = lambda: None  # wakes our own wait (the writer's doorbell)

    def on_io_done(self) -> None:
        """Called on the I/O thread: wake the loop to acknowledge."""
        self.io_done = True
        self.bell_post()

    def partition(self, topic: str, partition: int):
        plog = self.storage.partition(topic, partition, create=True)
        if plog.key not in self.epochs:
            self.epochs[plog.key] = EpochCache(plog.dir, plog.log_end_offset)
        return plog

    # -- one ring record = one request ----------------------------------------------------

    def on_record(self, sender: int, type_id: int, buf: memoryview) -> None:
        token, topic, partition, count, epoch, arg, pos = handoff.read_record(buf)
        if type_id == handoff.ACK_TO:
            self.reporter.report_to_master(handoff.ack_to_decoder.decode(buf[pos:]))
            return
        req = PendingRequest(token, count, self.reporter.answers[sender])
        try:
            plog = self.partition(topic, partition)
            if type_id == handoff.TRUNCATE:
                self._truncate(plog, arg)
                req.last_offset = arg - 1
            else:
                cache = self.epochs[plog.key]
                for i in range(count):
                    n = batch.peek_length(buf, pos)
                    view = buf[pos : pos + n]
                    if type_id == handoff.REPLICA:
                        epoch = batch.peek_epoch(view)
                        if batch.peek_base_offset(view) != plog.log_end_offset:
                            raise ReplicaGap(f"replicated batch starts at {batch.peek_base_offset(view)}, "
                                             f"the log ends at {plog.log_end_offset}")
                    if epoch > cache.latest_epoch:
                        cache.assign(epoch, plog.log_end_offset)
                    ticket = req.ticket(i)
                    try:
                        if self.feed_on:
                            self._append_published(plog, view, epoch, ticket)
                        else:
                            self.gc.append(plog, view, epoch, callback=ticket)
                    except Exception:
                        req.drop_ticket()
                        raise
                    pos += n
            self.reporter.changed_logs.add(plog)
        except Exception as e:  # fenced partition, disk full, a gap: fail this request only
            if not isinstance(e, (StorageError, ReplicaGap)):
                log.exception("appending to %s/%d failed", topic, partition)
            req.fail(error_code(e), f"{topic}/{partition}: {e}")
        req.appended()

    def _truncate(self, plog, offset: int) -> None:
        """A slave cutting its divergent tail (after flushing what is staged)."""
        self.commit_now()
        topic, partition = plog.key
        plog = self.storage.truncate(topic, partition, offset)
        self.epochs[plog.key] = EpochCache(plog.dir, plog.log_end_offset)
        self.reporter.changed_logs.add(plog)

    def _append_published(self, plog, view, epoch: int, ticket) -> None:
        """Append a batch the slaves will be sent when its round starts: copy it
        into the partition's arena now and stamp it there like the log does."""
        key = plog.key
        plog.rollback_on_enospc = False  # the slaves may hold a round the disk refused: fence, never reuse its offsets
        n = len(view)
        cur = self.arenas.get(key)
        if cur is None or cur[1] + n > len(cur[0]):
            cur = self.arenas[key] = [memoryview(np.empty(max(self.arena_bytes, n), np.uint8)), 0]
        arena, start = cur
        end = start + n
        arena[start:end] = view
        base, _ = self.gc.append(plog, view, epoch, callback=ticket)
        cur[1] = end  # only now: a batch the log refused leaves its bytes to be overwritten
        batch.stamp(arena, base, epoch, start)
        self.published.append((key, arena, start, end))

    # -- commit and tell --------------------------------------------------------------------

    def commit(self) -> None:
        """Start a group commit on the I/O thread (the loop keeps draining the
        rings meanwhile); its batches are acknowledged when it completes.  A
        master publishes the round to its slaves as it starts, so they write
        and fdatasync it while this broker does (docs/replication.md)."""
        results = self.gc.start_flush()
        if self.published:
            self._publish()
        self.after_flush(results)

    def commit_now(self) -> None:
        """A blocking group commit, in-flight ones included (stop, truncate)."""
        results = self.gc.flush()
        if self.published:
            self._publish()
        self.after_flush(results)
        self.after_flush(self.gc.poll(wait=True))

    def poll_flushes(self) -> None:
        self.io_done = False
        if self.gc.inflight_batches:
            res = self.gc.poll()
            if res:
                self.after_flush(res)

    def after_flush(self, results) -> None:
        for key, r in results.items():
            if isinstance(r, PartitionFenced):
                log.error("partition %s/%d fenced: %s", key[0], key[1], r)
            plog = self.storage.find(*key)
            if plog is not None:
                self.reporter.changed_logs.add(plog)  # its high watermark moved (or it failed): tell the acceptors
        if self.in_round and results:
            self._note(results)
        if results:
            self.reporter.tell_master(results, master=self.feed_on)
        if results or any(self.reporter.answers):
            self.report()

    def _publish(self) -> None:
        """Stream the round just handed to the disk to the slaves, one PUB
        message per partition: [b"B", (topic, partition, end offset), chunk,
        ...], each chunk whole batches laid end to end (usually one chunk: a
        round's batches of a partition are contiguous in its arena).  The
        writer publishes itself, so the batches cross no other process on the
        master; the replicator only hears, once the round is durable, what was
        published (high watermark and byte count), for the slaves' lag.

        Published before it is durable here, a round can reach a slave and
        then fail on this disk.  Nothing of it is acknowledged, the partition
        is fenced (``rollback_on_enospc`` is off, so even ENOSPC fences and no
        offset is ever assigned twice), and the epoch this broker takes at its
        next start makes the slave truncate it at the handshake."""
        if self.pub is None:
            self.open_pub()  # promoted between the loop's check and this flush
        by_key: dict[tuple[str, int], list] = {}
        for key, arena, start, end in self.published:
            runs = by_key.setdefault(key, [])
            if runs and runs[-1][0] is arena and runs[-1][2] == start:
                runs[-1][2] = end
            else:
                runs.append([arena, start, end])
        self.published = []
        for key, runs in by_key.items():
            plog = self.storage.find(*key)
            if plog is None or plog.fenced is not None:
                continue  # its flush did not start: nothing of it goes out
            chunks = [arena[start:end] for arena, start, end in runs]
            # PUB never blocks: past pub_hwm it drops, and a slave sees the gap
            # by offset and catches up from the files
            self.pub.send_multipart([b"B", ipc_replica.encoder.encode(ipc_replica.FeedMeta(*key, plog.log_end_offset)), *chunks], copy=False)
            self.in_round[key] = self.in_round.get(key, 0) + sum(len(c) for c in chunks)

    def _note(self, results) -> None:
        """Add the published partitions this flush finished to the next note
        to the replicator (sent when reports are due, see report_every_s)."""
        for key, r in results.items():
            n = self.in_round.pop(key, None)
            if n is not None:
                cur = self.note.setdefault(key, [-1, 0])
                cur[0] = r if isinstance(r, int) else -1
                cur[1] += n
        if self.note:
            self.reporter.hold_until_due()

    def _send_note(self) -> None:
        """One note to the replicator: per partition, high watermark and bytes published."""
        sizes = [ipc_replica.Published(k[0], k[1], hwm, n) for k, (hwm, n) in self.note.items()]
        self.note = {}
        try:
            self.feed.send(ipc_replica.encoder.encode(sizes), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the replicator is behind: its lag in bytes under-reports for a moment

    def report(self, logs=None, *, send_held: bool = False) -> None:
        """Report answered requests and moved watermarks (every one of
        ``logs``, when given); see :meth:`CompletionReporter.report`."""
        if self.reporter.report(logs, master=self.feed_on, send_held=send_held) and self.note:
            self._send_note()

    # -- loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        now = self.clock()
        next_state = now
        next_retention = now + self.retention_check_s
        while True:
            if self.feed_on and self.pub is None:
                self.open_pub()  # a slave's writer, promoted: bind and announce where it publishes
            got = 0
            for r in self.group.readers:
                got += r.drain(self.handlers[r])
            now = self.clock()
            if self.io_done or self.gc.inflight_batches:
                self.poll_flushes()
            inflight = self.gc.inflight_batches
            if self.gc.pending_batches and not inflight and (got == 0 or self.gc.due(now)):
                self.commit()
            elif any(self.reporter.answers) or (self.reporter.due_at is not None and now >= self.reporter.due_at):
                self.report()
            if got:
                continue
            if self.stopping:
                break
            if now >= next_state:
                self.report(self.storage.logs())
                self.storage.remove_due()  # retention's .deleted files whose delete_delay_ms has passed
                next_state = now + STATE_EVERY_S
            if now >= next_retention:
                if self.storage.apply_retention():
                    self.report(self.storage.logs())
                next_retention = now + self.retention_check_s
            # With a round in flight its end wakes us (bell_post); the next
            # round then takes everything that arrived meanwhile.
            deadline = None if inflight else self.gc.deadline()
            if self.reporter.due_at is not None:
                deadline = self.reporter.due_at if deadline is None else min(deadline, self.reporter.due_at)
            timeout = 0.1 if deadline is None else max(0.0, min(0.1, deadline - now))
            self._wait(timeout)
        self.commit_now()
        self.after_flush(self.gc.sync_all())
        self.after_flush(self.gc.close())
        self.report(send_held=True)  # whatever reports are held go now

    def _wait(self, timeout: float) -> None:
        if not self.group.readers:
            time.sleep(min(timeout, 0.005) if self.gc.inflight_batches else timeout)
            return
        try:
            self.group.wait(timeout, also=lambda: self.io_done)
        except (PeerDead, RingClosed) as e:
            reader = getattr(e, "reader", None)
            if isinstance(e, PeerDead):
                log.error("acceptor ring producer died: %s", e)
            if reader is not None:
                self.group.remove(reader)


def recover_owned(storage: Storage, index: int, writers: int) -> None:
    """Open (and so recover) every partition on disk that this writer owns."""
    for topic, partition in storage.partitions():
        if handoff.owner_of(topic, partition, writers) == index:
            plog = storage.partition(topic, partition)
            if plog.fenced is not None:
                log.error("partition %s/%d is fenced: %s", topic, partition, plog.fenced)


def main(index: int, cfg_bytes: bytes, instance: str, ring_names: list[str], doorbell: str, push_eps: list[str],
         control_ep: str, cpus: list[int] | None, feed_ep: str | None = None, feed_on: bool = False,
         pub_bind: str | None = None) -> None:
    """Entry point of a writer process (spawned by the supervisor)."""
    cfg = child_setup(f"writer{index}", cfg_bytes, cpus)
    ctx = zmq.Context()
    pushes = []
    for ep in push_eps:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.SNDHWM, 0)  # bounded by the acceptors' max_pending_requests
        s.connect(ep)
        pushes.append(s)
    r = cfg.ring
    bell = Doorbell(instance, doorbell)
    shared = [SharedRing.attach(instance, name, heartbeat_ms=r.heartbeat_ms) for name in ring_names]
    readers = [s.reader(spin_us=r.spin(), dead_after_ms=r.dead_after_ms) for s in shared]
    group = ReaderGroup(readers, bell.signal, spin_us=r.spin())
    storage = Storage(cfg.broker.data_dir, cfg.log)
    feed = None
    if feed_ep is not None:  # replicated: this writer publishes its rounds to the slaves itself
        feed = ctx.socket(zmq.PUSH)
        feed.setsockopt(zmq.LINGER, 0)
        feed.setsockopt(zmq.SNDHWM, 10_000)
        feed.connect(feed_ep)

    def connect_acks(endpoints: list[str]) -> list:
        socks = []
        for ep in endpoints:
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100)
            s.connect(ep)
            socks.append(s)
        return socks

    reporter = CompletionReporter(index, pushes, replicated=feed is not None,
                                  report_every_s=cfg.replication.writer_report_ms / 1000.0,
                                  connect_master_acceptors=connect_acks)
    w = Writer(index, storage, None, group, reporter, feed=feed, retention_check_s=cfg.log.retention_check_ms / 1000.0)
    w.bell_post = bell.signal.post
    w.gc = GroupCommit(cfg.log, on_io_done=w.on_io_done)
    w.feed_on = feed_on
    ctl = ctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 1000)
    ctl.connect(control_ep)
    pub_at = pub_bind or f"tcp://{cfg.broker.bind}:*"

    def open_pub(promoted: bool) -> str:
        """Bind the PUB socket slaves subscribe to: a master's writer at start,
        a slave's only once promoted (a slave holds no port it does not serve)."""
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, cfg.replication.pub_hwm)
        pub.setsockopt(zmq.LINGER, 0)
        try:
            pub.bind(pub_at)
        except zmq.ZMQError as e:
            if not promoted:
                pub.close(0)
                raise RuntimeError(f"writer{index}: cannot bind the replication PUB socket at {pub_at}: {e}") from e
            # serving now matters more than the port: metadata tells slaves where
            log.warning("writer%d: cannot bind %s (%s); publishing on a port the OS chooses", index, pub_at, e)
            pub.bind(f"tcp://{cfg.broker.bind}:*")
        w.pub = pub
        return pub.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish_once_promoted() -> None:
        endpoint = open_pub(promoted=True)
        ctl.send(control.encoder.encode(control.WriterPublishing(writer=index, endpoint=endpoint)))

    w.open_pub = publish_once_promoted

    def on_term(signum, frame):
        w.stopping = True

    def on_promoted(signum, frame):
        w.feed_on = feed is not None

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR2, on_promoted)
    try:
        pub_endpoint = open_pub(promoted=False) if feed is not None and feed_on else ""
        recover_owned(storage, index, cfg.broker.writers)
        w.report(storage.logs())
        ctl.send(control.encoder.encode(control.WriterReady(writer=index, pid=os.getpid(), pub_endpoint=pub_endpoint)))
        w.gc.start_io_threads()
        freeze_heap()
        w.run()
    finally:
        try:
            storage.close()
        finally:
            for s in shared:
                s.close()
            bell.close()
            ctx.destroy(linger=1000)
