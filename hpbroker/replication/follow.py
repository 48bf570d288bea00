"""What a slave knows of each partition it follows, and the stream's rules.

Per partition (``"topic/partition"``): the next offset to hand the local
writer (``expected``), what the local writers made durable, the master's
high watermark, the ring records still in flight, and whether the partition
is *paused* (a writer refused a batch: wait for the rest in flight, then
catch up from the durable offset) or *stopped* (not followed past a torn or
corrupt batch, nor on a fenced local partition; only that partition).

:meth:`Follow.forward` is the stream's one rule: a batch that starts at the
expected offset is appended, one that ends before it is already here, one
past it is a gap (the partition catches up), and one of an epoch newer than
the handshake's is appended nowhere: the caller handshakes again first.

No sockets and no rings: records go to the local writers through the
``send`` passed in, and catch-up reads are asked of the
:class:`~hpbroker.replication.catchup.CatchUp` passed in.
"""

from __future__ import annotations

import logging
from typing import Callable

from hpbroker import batch
from hpbroker.ipc import handoff
from hpbroker.ipc.completions import Completions
from hpbroker.protocol.errors import ErrorCode
from hpbroker.replication.catchup import CatchUp
from hpbroker.replication.messages import CatchUpReply
from hpbroker.replication.stalls import StallWatch

log = logging.getLogger("hpbroker.replication")

# send(kind, token, topic, partition, batches, arg): one ring record to the partition's writer
Send = Callable[[int, int, str, int, list, int], None]


class Follow:
    def __init__(self, send: Send, catchup: CatchUp):
        self.send = send
        self.catchup = catchup
        self.expected: dict[str, int] = {}  # next offset to hand to the writer
        self.durable: dict[str, int] = {}  # what the local writers made durable
        self.master_hwm: dict[str, int] = {}
        self.inflight: dict[str, int] = {}  # ring records sent and not yet answered
        self.paused: set[str] = set()  # a writer refused a batch: wait for in-flight ones, then catch up
        self.stopped: dict[str, str] = {}  # partitions not followed any more, and why
        self.durable_changed = True  # since the last SlaveAck went
        self.gaps = 0
        self.received = 0  # batches handed to the writers
        self.stalls = StallWatch()
        self._tokens: dict[int, str] = {}  # ring record -> its partition
        self._next_token = 1

    # -- to the local writers -------------------------------------------------------------

    def _send(self, kind: int, topic: str, partition: int, frames: list, arg: int = 0) -> None:
        key = handoff.tp_key(topic, partition)
        token = self._next_token
        self._next_token += 1
        self.send(kind, token, topic, partition, frames, arg)
        self._tokens[token] = key
        self.inflight[key] = self.inflight.get(key, 0) + 1

    def forward(self, topic: str, partition: int, views: list, epoch: int) -> bool:
        """Hand whole batches to the writer, skipping what it already has;
        a batch past the expected offset means a gap.

        A batch of an epoch newer than the handshake's ``epoch`` means the
        master restarted (a new reign) and its fixed ports took this slave's
        sockets back before a handshake did.  Nothing of it is appended:
        -> False, and the caller handshakes again, so truncation by epoch
        runs first (appended now, a batch of the new reign could land right
        after a tail the master no longer has, and that tail would never be
        cut)."""
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
            if batch.peek_epoch(v) > epoch:
                log.warning("%s: the master sent a batch of epoch %d, newer than the handshake's %d: the master "
                            "restarted; handshaking again before appending any of it", key, batch.peek_epoch(v), epoch)
                return False
            base = batch.peek_base_offset(v)
            end = base + batch.peek_count(v)
            if end <= exp:
                continue  # already here
            if base != exp:
                self.gaps += 1
                self.want_catch_up(key)
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
            self._send(handoff.REPLICA, topic, partition, out)
            self.expected[key] = exp
            self.received += len(out)
        return True

    def truncate(self, topic: str, partition: int, offset: int) -> None:
        """Cut the local log of a partition back to ``offset``."""
        self._send(handoff.TRUNCATE, topic, partition, [], arg=offset)
        self.expected[handoff.tp_key(topic, partition)] = offset

    # -- from the local writers -----------------------------------------------------------

    def on_completions(self, c: Completions) -> None:
        """One writer's group commit: records answered, durable offsets moved."""
        for token, code, message, _offsets, _last in c.done:
            key = self._tokens.pop(token, None)
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
                self.durable_changed = True
        for key in [k for k in self.paused if not self.inflight.get(k)]:
            # nothing of this partition is in flight: its log ends at its durable offset
            self.paused.discard(key)
            self.expected[key] = self.durable.get(key, 0)
            self.want_catch_up(key)

    def start_at_durable(self) -> None:
        """Each partition the writers reported goes on from where its log ends."""
        for k, v in self.durable.items():
            self.expected.setdefault(k, v)

    def appending(self) -> bool:
        """Some ring record is not answered yet."""
        return any(self.inflight.values())

    # -- from the master ------------------------------------------------------------------

    def want_catch_up(self, key: str) -> None:
        if key not in self.paused and key not in self.stopped:
            self.catchup.want(key)

    def catch_up_if_behind(self, key: str) -> None:
        """Catch ``key`` up if the master is known to hold more than arrived here."""
        if self.master_hwm.get(key, 0) > self.expected.get(key, 0):
            self.want_catch_up(key)

    def on_handshake(self, hwm: dict[str, int]) -> None:
        """The handshake's high watermarks: every partition behind them catches up."""
        self.master_hwm.update(hwm)
        for k, v in hwm.items():
            if v > self.expected.get(k, 0):
                self.want_catch_up(k)

    def on_keepalive(self, hwm: dict[str, int]) -> None:
        """A keep-alive's high watermarks: a partition stalled behind them catches up."""
        for k, v in hwm.items():
            self.master_hwm[k] = max(self.master_hwm.get(k, 0), v)
        for key in self.stalls.keepalive(hwm, self.expected, self.inflight):
            self.want_catch_up(key)

    def streams(self, topic: str, partition: int, hwm: int) -> bool:
        """A PUB message of a partition, up to ``hwm``: are its batches for
        the stream?  Not while the partition is paused or catching up (the
        catch-up read brings them)."""
        key = handoff.tp_key(topic, partition)
        self.master_hwm[key] = max(self.master_hwm.get(key, 0), hwm)
        return key not in self.paused and not self.catchup.busy(key)

    def on_catch_up(self, reply: CatchUpReply, data, epoch: int) -> bool:
        """A catch-up read's answer; False as :meth:`forward` (a newer reign)."""
        key = handoff.tp_key(reply.topic, reply.partition)
        self.catchup.answered(key)
        self.master_hwm[key] = max(self.master_hwm.get(key, 0), reply.hwm)
        if reply.error:
            log.error("catch-up of %s failed on the master: %s", key, reply.error)
            return True
        self.catchup.received(len(data))
        views = [memoryview(data)[pos : pos + h.batch_length] for pos, h in batch.iter_batches(data)]
        if views and not self.forward(reply.topic, reply.partition, views, epoch):
            return False
        # PUB messages that arrived while this partition was catching up were
        # skipped: keep reading until the newest high watermark known.
        if views and self.expected.get(key, 0) < self.master_hwm[key]:
            self.want_catch_up(key)
        return True

    def lag(self) -> int:
        """Messages the master holds that this slave has not made durable."""
        return sum(max(0, v - self.durable.get(k, 0)) for k, v in self.master_hwm.items())
