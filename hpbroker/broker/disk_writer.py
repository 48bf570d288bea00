"""The disk writer: rings in, appends and group commits, completions out.

A writer process owns the partitions hashed to it (see
:func:`hpbroker.ipc.handoff.owner_of`) and is the only process that writes
their files.  Its loop (:meth:`DiskWriter.run`):

1. drain every input ring (one per acceptor, and a slave's replicator's);
   each record is one request (:mod:`~hpbroker.broker.pending_request`):
   append its batches, stamping offsets, each holding a ticket;
2. when no group-commit round is in flight and the policy says so, or the
   rings ran dry, start a round: every dirty partition is written and
   fdatasync'd (``durable`` mode) on the I/O threads while the loop goes on
   draining.  Rounds never overlap, so while the disk works the next round
   grows by itself: the batch size adapts to the load (the group commit of
   databases and of MetaQ's GroupCommitService).  A master publishes each
   round to its slaves as it starts (:mod:`~hpbroker.broker.round_publisher`);
3. report to each acceptor which of its requests are now durable, at which
   base offsets, plus every changed high watermark
   (:mod:`~hpbroker.broker.completion_reporter`);
4. sleep on the writer's doorbell semaphore until an acceptor rings, a
   round finishes or the next flush deadline comes.

A failed write or fsync fails every request waiting on that partition and
leaves the partition fenced; nothing is retried and then acknowledged.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable

from hpbroker import batch
from hpbroker.io import DiskFull, GroupCommit, PartitionFenced, Storage, StorageError
from hpbroker.io.epochs import EpochCache
from hpbroker.io.producer_state import DUPLICATE, SequenceError
from hpbroker.ipc import handoff
from hpbroker.ring import PeerDead, ReaderGroup, RingClosed

from hpbroker.broker.completion_reporter import CompletionReporter
from hpbroker.broker.pending_request import PendingRequest, ReplicaGap, error_code
from hpbroker.broker.round_publisher import RoundPublisher
from hpbroker.broker.writer_stats import WriterStats

log = logging.getLogger("hpbroker.writer")

FULL_REPORT_EVERY_S = 1.0  # every watermark to every push, so late or restarted acceptors catch up


class FlushWakeup:
    """The group commit's ``on_io_done``: an I/O thread finished a flush.
    It notes that for the loop and rings the writer's doorbell to wake it."""

    __slots__ = ("flush_finished", "_ring_doorbell")

    def __init__(self, ring_doorbell: Callable[[], None] = lambda: None):
        self.flush_finished = False
        self._ring_doorbell = ring_doorbell

    def set(self) -> None:
        self.flush_finished = True
        self._ring_doorbell()


class DiskWriter:
    """``rings``: the input rings' readers; ``flush_wakeup``: what
    ``group_commit`` calls on its I/O threads.  ``publisher``: a master's
    (None otherwise); ``make_publisher()``: builds one when a slave's writer
    is promoted (None: never, an unreplicated broker)."""

    def __init__(self, storage: Storage, group_commit: GroupCommit, rings: ReaderGroup, reporter: CompletionReporter,
                 flush_wakeup: FlushWakeup, *, publisher: RoundPublisher | None = None,
                 make_publisher: Callable[[], RoundPublisher] | None = None, retention_check_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, stats: WriterStats | None = None):
        self.storage = storage
        self.group_commit = group_commit
        self.rings = rings
        self.reporter = reporter
        self.flush_wakeup = flush_wakeup
        self.publisher = publisher
        self._make_publisher = make_publisher
        self.retention_check_s = retention_check_s
        self.clock = clock
        self.epoch_caches: dict[tuple[str, int], EpochCache] = {}
        self.stopping = False
        self._promotion_requested = False
        self._handler_of = {reader: partial(self.on_record, i) for i, reader in enumerate(rings.readers)}
        self.stats = stats or WriterStats()  # its slot of the stats block (hpbroker/stats)

    def stop(self) -> None:
        """SIGTERM: drain, flush, report and leave the loop."""
        self.stopping = True

    def request_promotion(self) -> None:
        """SIGUSR2: promoted; the loop calls :meth:`promote` at its next turn."""
        self._promotion_requested = True

    def promote(self) -> None:
        """This slave's log is a master's from now on: publish every round."""
        self._promotion_requested = False
        if self.publisher is None and self._make_publisher is not None:
            self.publisher = self._make_publisher()

    # -- one ring record = one request ----------------------------------------------------

    def on_record(self, ring: int, record_type: int, buf: memoryview) -> None:
        token, topic, partition, count, epoch, arg, pos = handoff.read_record(buf)
        if record_type == handoff.ACK_TO:
            self.reporter.report_to_master(handoff.ack_to_decoder.decode(buf[pos:]))
            return
        request = PendingRequest(token, count, self.reporter.answers[ring])
        try:
            plog = self._open_log(topic, partition)
            if record_type == handoff.TRUNCATE:
                self._truncate(plog, arg)
                request.last_offset = arg - 1
            else:
                self._append_batches(plog, buf, pos, count, epoch, record_type == handoff.REPLICA, request)
                self.stats.appended(topic, partition, buf.nbytes - pos)
            self.reporter.changed_logs.add(plog)
        except Exception as e:  # fenced partition, disk full, a gap: fail this request only
            if not isinstance(e, (StorageError, ReplicaGap, SequenceError)):
                log.exception("appending to %s/%d failed", topic, partition)
            if isinstance(e, DiskFull):
                self._rolled_back((topic, partition), e)
            request.fail(error_code(e), f"{topic}/{partition}: {e}")
        request.appended()

    def _open_log(self, topic: str, partition: int):
        plog = self.storage.partition(topic, partition, create=True)
        if plog.key not in self.epoch_caches:
            self.epoch_caches[plog.key] = EpochCache(plog.dir, plog.log_end_offset, self.storage.fs)
        return plog

    def _append_batches(self, plog, buf: memoryview, pos: int, count: int, epoch: int, replica: bool,
                        request: PendingRequest) -> None:
        """Append the record's ``count`` batches from ``pos``, each with a
        ticket of ``request``.  A replica's batches keep the master's epochs
        and offsets, and must start at this log's end."""
        epochs = self.epoch_caches[plog.key]
        publisher = self.publisher
        append = self.group_commit.append if publisher is None else publisher.append
        producers = plog.producers
        for i in range(count):
            n = batch.peek_length(buf, pos)
            view = buf[pos : pos + n]
            if not replica:
                pid, seq = batch.peek_producer(view)
                if pid >= 0:
                    verdict, base, last = producers.check(pid, seq, batch.peek_count(view))  # raises SequenceError
                    if verdict == DUPLICATE:  # a retry of a batch already written: its offsets, once durable
                        self.group_commit.watch(plog, base, last, request.ticket(i))
                        pos += n
                        continue
            if replica:
                epoch = batch.peek_epoch(view)
                if batch.peek_base_offset(view) != plog.log_end_offset:
                    raise ReplicaGap(f"replicated batch starts at {batch.peek_base_offset(view)}, "
                                     f"the log ends at {plog.log_end_offset}")
            if epoch > epochs.latest_epoch:
                epochs.assign(epoch, plog.log_end_offset)
            ticket = request.ticket(i)
            try:
                append(plog, view, epoch, ticket)
            except Exception:
                request.drop_ticket()
                raise
            pos += n

    def _rolled_back(self, key: tuple[str, int], e: DiskFull) -> None:
        """ENOSPC took the log back to ``e.rolled_back_to``: an epoch whose
        first batch went with it starts wherever its next batch lands (the
        checkpoint must say where each epoch's batches really begin; recovery
        and the scrubber check every batch's epoch against it)."""
        epochs = self.epoch_caches.get(key)
        if epochs is not None and e.rolled_back_to >= 0:
            try:
                epochs.truncate_from(e.rolled_back_to)
            except OSError as err:
                log.error("%s/%d: could not update the leader-epoch checkpoint after ENOSPC: %s", key[0], key[1], err)

    def _truncate(self, plog, offset: int) -> None:
        """A slave cutting its divergent tail (after flushing what is staged)."""
        self.commit_now()
        topic, partition = plog.key
        plog = self.storage.truncate(topic, partition, offset)
        self.epoch_caches[plog.key] = EpochCache(plog.dir, plog.log_end_offset, self.storage.fs)
        self.reporter.changed_logs.add(plog)

    # -- commit and tell --------------------------------------------------------------------

    def commit(self) -> None:
        """Start a group commit on the I/O threads (the loop keeps draining the
        rings meanwhile); its batches are acknowledged when it completes.  A
        master publishes the round to its slaves as it starts, so they write
        and fdatasync it while this broker does (docs/replication.md)."""
        self.stats.round(self.group_commit.pending_batches, self.group_commit.pending_bytes)
        results = self.group_commit.start_flush()
        if self.publisher is not None:
            self.publisher.publish_round()
        self._after_flush(results)

    def commit_now(self) -> None:
        """A blocking group commit, in-flight ones included (stop, truncate)."""
        results = self.group_commit.flush()
        if self.publisher is not None:
            self.publisher.publish_round()
        self._after_flush(results)
        self._after_flush(self.group_commit.poll(wait=True))

    def _collect_flushes(self) -> None:
        self.flush_wakeup.flush_finished = False
        if self.group_commit.inflight_batches:
            results = self.group_commit.poll()
            if results:
                self._after_flush(results)

    def _after_flush(self, results: dict) -> None:
        """``results``: partition -> durable offset or the StorageError that failed it."""
        reporter = self.reporter
        for key, result in results.items():
            if isinstance(result, PartitionFenced):
                log.error("partition %s/%d fenced: %s", key[0], key[1], result)
            elif isinstance(result, DiskFull):
                self._rolled_back(key, result)
            plog = self.storage.find(*key)
            if plog is not None:
                reporter.changed_logs.add(plog)  # its high watermark moved (or it failed): tell the acceptors
        if results:
            if self.publisher is not None and self.publisher.note_flushed(results):
                reporter.hold_until_due()
            reporter.tell_master(results, master=self.publisher is not None)
        if results or any(reporter.answers):
            self.report()

    def report(self, logs=None, *, send_held: bool = False) -> None:
        """Report answered requests and moved watermarks (every one of
        ``logs``, when given); see :meth:`CompletionReporter.report`."""
        publisher = self.publisher
        self.stats.logs(self.reporter.changed_logs if logs is None else logs, full=logs is not None)
        if self.reporter.report(logs, master=publisher is not None, send_held=send_held) and publisher is not None:
            publisher.send_note()

    # -- loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        group_commit, reporter, flush_wakeup = self.group_commit, self.reporter, self.flush_wakeup
        now = self.clock()
        next_full_report = now
        next_retention = now + self.retention_check_s
        while True:
            if self._promotion_requested:
                self.promote()  # bind and announce where it publishes
            drained = 0
            for reader in self.rings.readers:
                drained += reader.drain(self._handler_of[reader])
            now = self.clock()
            if flush_wakeup.flush_finished or group_commit.inflight_batches:
                self._collect_flushes()
            inflight = group_commit.inflight_batches
            if group_commit.pending_batches and not inflight and (drained == 0 or group_commit.due(now)):
                self.commit()
            elif any(reporter.answers) or (reporter.due_at is not None and now >= reporter.due_at):
                self.report()
            if drained:
                continue
            if self.stopping:
                break
            if now >= next_full_report:
                self.storage.check_scrub_findings()  # the scrubber's reports fence (hpbroker.io.scrub); logged there
                self.report(self.storage.logs())
                self.storage.remove_due()  # retention's .deleted files whose delete_delay_ms has passed
                next_full_report = now + FULL_REPORT_EVERY_S
            if now >= next_retention:
                if self.storage.apply_retention():
                    self.report(self.storage.logs())
                next_retention = now + self.retention_check_s
            self._wait(now, inflight)
        self.commit_now()
        self._after_flush(group_commit.sync_all())
        self._after_flush(group_commit.close())
        self.report(send_held=True)

    def _wait(self, now: float, inflight: int) -> None:
        """Sleep until a ring has a record, a round finishes (it posts the
        doorbell; the next round then takes everything that arrived
        meanwhile), the next flush is due or held reports are."""
        deadline = None if inflight else self.group_commit.deadline()
        due_at = self.reporter.due_at
        if due_at is not None:
            deadline = due_at if deadline is None else min(deadline, due_at)
        timeout = 0.1 if deadline is None else max(0.0, min(0.1, deadline - now))
        if not self.rings.readers:
            time.sleep(min(timeout, 0.005) if self.group_commit.inflight_batches else timeout)
            return
        try:
            self.rings.wait(timeout, also=lambda: self.flush_wakeup.flush_finished)
        except (PeerDead, RingClosed) as e:
            reader = getattr(e, "reader", None)
            if isinstance(e, PeerDead):
                log.error("acceptor ring producer died: %s", e)
            if reader is not None:
                self.rings.remove(reader)
