"""Read the followed files in chunks, cut them into records, send them, and
move each file's checkpoint as the broker acknowledges, in file order.

The shipper is handed a ``send(topic, partition, values, keys, on_done)``
function (the command wraps ``Producer.send_batch``; tests pass a fake),
so nothing here touches a socket.  ``on_done(error or None)`` may be called
from any thread: it only queues the outcome and sets ``wake``; the
agent's thread applies it in :meth:`Shipper.collect`.

* **Chunks.** A read of up to ``read_bytes`` at a file's read position is
  cut into records (:mod:`hpbroker.tail.lines`); the records are routed
  (:mod:`hpbroker.tail.router`) and sent, one ``send`` per partition.
  The chunk (end offset, bytes, lines) joins the file's queue of chunks
  in flight.
* **In-order acknowledgement.** A file's checkpoint moves to a chunk's
  end only when that chunk and every chunk before it in the file are
  acknowledged: the queue is popped from its head, so a later chunk
  acknowledged first waits for the earlier one.
* **Back-pressure.** Nothing is read while ``max_inflight_bytes`` of chunks
  are unacknowledged, so a slow or stopped broker stops the reading and
  the files themselves are the buffer: nothing is dropped.
* **Failure.** The Producer retries the retriable errors itself (for
  ever: ``retries`` is set very high by the command).  A chunk that still
  fails (a non-retriable error) stops the reading; once everything in
  flight has settled, every file is read again from its checkpoint after
  a backoff that doubles up to 30 s.  A later chunk that succeeded is
  sent again too (at least once), so the order of first arrivals holds.
  ``fatal(exc)`` (a message) marks an error that no retry can cure
  (a record larger than the broker takes): the agent stops.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Callable

from hpbroker.tail.config import Agent
from hpbroker.tail.follower import Follower, TrackedFile
from hpbroker.tail.lines import splitter
from hpbroker.tail.router import Router, path_partition

MAX_BACKOFF = 30.0

Send = Callable[[str, int, list, "list | None", Callable[[BaseException | None], None]], None]


class Chunk:
    __slots__ = ("file", "gen", "end", "nbytes", "nlines", "parts", "error", "sent_at")

    def __init__(self, file: TrackedFile, gen: int, end: int, nbytes: int, nlines: int, sent_at: float):
        self.file = file
        self.gen = gen
        self.end = end
        self.nbytes = nbytes
        self.nlines = nlines
        self.parts = 0
        self.error: BaseException | None = None
        self.sent_at = sent_at


class Shipper:
    def __init__(self, agent: Agent, follower: Follower, send: Send, partitions: dict[str, int],
                 clock: Callable[[], float], wake: threading.Event | None = None,
                 note: Callable[[str], None] = lambda s: None, warn: Callable[[str], None] = lambda s: None,
                 fatal: Callable[[BaseException], str | None] = lambda e: None):
        self.agent = agent
        self.follower = follower
        self.send = send
        self.partitions = partitions
        self.clock = clock
        self.wake = wake or threading.Event()
        self.note = note
        self.warn = warn
        self.fatal = fatal
        self.read_bytes = agent.read_bytes
        self.max_inflight = agent.max_inflight_bytes
        self._cut = {s.name: splitter(s, agent.max_record_bytes) for s in agent.sources}
        self._routers: dict[str, Router] = {}
        self._done: deque = deque()  # (chunk, error) from on_done, any thread
        self.inflight_bytes = 0
        self.inflight_chunks = 0
        # counters for the status line
        self.sent_lines = self.sent_bytes = 0
        self.acked_lines = self.acked_bytes = 0
        self.acked_changed = False  # a checkpoint moved since the agent last took the entries
        # failure / retry state
        self.failure: BaseException | None = None
        self.fatal_message: str | None = None
        self._retry_at = 0.0
        self._backoff = agent.retry_backoff_ms / 1000.0

    # -- outcomes -------------------------------------------------------------------

    def _on_done(self, chunk: Chunk, error: BaseException | None) -> None:
        self._done.append((chunk, error))  # deque.append is atomic: safe from the Producer's thread
        self.wake.set()

    def collect(self) -> int:
        """Apply the outcomes that arrived; return how many chunks completed."""
        done = self._done
        touched = set()
        n = 0
        while done:
            chunk, error = done.popleft()
            chunk.parts -= 1
            if error is not None and chunk.error is None:
                chunk.error = error
            if chunk.parts == 0:
                touched.add(chunk.file)
                n += 1
        for f in touched:
            self._advance(f)
        return n

    def _advance(self, f: TrackedFile) -> None:
        q = f.chunks
        while q and q[0].parts == 0:
            c = q.popleft()
            self.inflight_bytes -= c.nbytes
            self.inflight_chunks -= 1
            if c.error is not None:
                self._failed(f, c.error)
                continue
            self.acked_lines += c.nlines
            self.acked_bytes += c.nbytes
            if c.gen == f.gen and not f.failed:
                f.acked = c.end
                self.acked_changed = True
            if self.failure is None and self._backoff > self.agent.retry_backoff_ms / 1000.0:
                self._backoff = self.agent.retry_backoff_ms / 1000.0

    def _failed(self, f: TrackedFile, error: BaseException) -> None:
        f.failed = True
        msg = self.fatal(error)
        if msg is not None:
            self.fatal_message = msg
        if self.failure is None:
            self.failure = error
            self._retry_at = self.clock() + self._backoff
            self.warn(f"the broker refused a batch of {f.path} ({error}); stopped reading: re-sending from the "
                      f"last acknowledged line in {self._backoff:g} s" if msg is None else f"stopping: {msg}")

    # -- reading --------------------------------------------------------------------

    def step(self, final: bool = False) -> bool:
        """Read and send what the in-flight bound allows; True when anything was sent."""
        if self.failure is not None and not self._recover():
            return False
        now = self.clock()
        progressed = False
        for f in self.follower.reading_order():
            if self.inflight_bytes >= self.max_inflight:
                break
            if f.fd is None:
                continue
            while self.inflight_bytes < self.max_inflight and not f.at_eof:
                if not self._read(f, now, final):
                    break
                progressed = True
            if f.at_eof and f.read_pos < f.size and f.size != f.flush_tried and self._flush_due(f, now, final):
                # at the end, with a record or line kept back that may now go: one more read
                f.flush_tried = f.size
                progressed |= self._read(f, now, final)
            if f.removed and f.at_eof and not f.chunks and f.acked >= f.size \
                    and (final or now - f.grew_at >= self.agent.close_inactive_ms / 1000.0):
                self.note(f"{f.path}: read to its end and acknowledged; closed")
                self.follower.forget(f)
                self.acked_changed = True
        return progressed

    def _flush_due(self, f: TrackedFile, now: float, final: bool) -> bool:
        idle = now - f.grew_at
        return final or (f.removed and idle >= self.agent.close_inactive_ms / 1000.0) \
            or (f.source.start_rx is not None and idle >= f.source.multiline_timeout_ms / 1000.0)

    def _read(self, f: TrackedFile, now: float, final: bool) -> bool:
        """One chunk of ``f``; False when nothing could be sent (the file's
        end, or only part of a line or record so far)."""
        src = f.source
        data = os.pread(f.fd, self.read_bytes, f.read_pos)
        short = len(data) < self.read_bytes
        if f.read_pos + len(data) > f.size:
            f.size = f.read_pos + len(data)
            f.grew_at = now
        idle = now - f.grew_at
        last = short and (final or (f.removed and idle >= self.agent.close_inactive_ms / 1000.0))
        flush = short and src.start_rx is not None and idle >= src.multiline_timeout_ms / 1000.0
        cut = self._cut[src.name](data, flush, last)
        if short:
            f.at_eof = True
        if not cut.consumed:
            return False
        records = cut.records
        self._send(f, records, cut.consumed, now)
        f.read_pos += cut.consumed
        return True

    def _send(self, f: TrackedFile, records: list[bytes], nbytes: int, now: float) -> None:
        src = f.source
        router = self._routers.get(src.name)
        if router is None:
            router = self._routers[src.name] = Router(src, self.partitions[src.topic])
        if f.partition is None:
            f.partition = path_partition(f.first_path, router.partitions)
        chunk = Chunk(f, f.gen, f.read_pos + nbytes, nbytes, len(records), now)
        f.chunks.append(chunk)
        self.inflight_bytes += nbytes
        self.inflight_chunks += 1
        self.sent_lines += len(records)
        self.sent_bytes += nbytes
        if not records:  # only possible for an empty final piece: nothing to send, done at once
            self._on_done(chunk, None)
            chunk.parts = 1
            return
        groups = router.route(records, f.partition)
        chunk.parts = len(groups)

        def done(error, chunk=chunk):
            self._on_done(chunk, error)

        for part, values, keys in groups:
            try:
                self.send(src.topic, part, values, keys, done)
            except Exception as e:  # a send that raises is a failed send
                done(e)

    def _recover(self) -> bool:
        """After a failure: once nothing is in flight and the backoff has
        passed, rewind every file to its checkpoint and read on."""
        if self.inflight_chunks or self.clock() < self._retry_at or self.fatal_message is not None:
            return False
        for f in self.follower.files.values():
            f.read_pos = f.acked
            f.failed = False
            f.at_eof = False
        self.note(f"re-sending from the last acknowledged line of each file (after: {self.failure})")
        self.failure = None
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        return True

    # -- what the agent asks -----------------------------------------------------------

    def oldest_unacked(self) -> float | None:
        """When the oldest chunk still in flight was sent, or None."""
        t = None
        for f in self.follower.files.values():
            if f.chunks:
                s = f.chunks[0].sent_at
                t = s if t is None or s < t else t
        return t

    def drained(self) -> bool:
        """Everything read so far is acknowledged and no file has more to read."""
        return not self.inflight_chunks and all(f.at_eof and f.acked >= f.read_pos for f in self.follower.files.values())
