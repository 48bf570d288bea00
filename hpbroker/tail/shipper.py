"""Read the followed files in chunks, cut them into records, send them, and
move each file's checkpoint as the broker acknowledges, in file order.

The shipper is handed a ``send(topic, partition, values, keys, on_done)``
function (the command wraps ``Producer.send_batch`` with the Producer's own
retries off; tests pass a fake), so nothing here touches a socket.
``on_done(error or None)`` may be called from any thread: it only queues
the outcome and sets ``wake``; the agent's thread applies it in
:meth:`Shipper.collect`.

* **Chunks.** A read of up to ``read_bytes`` at a file's read position is
  cut into records (:mod:`hpbroker.tail.lines`) and routed
  (:mod:`hpbroker.tail.router`); each partition's share joins that
  partition's *lane*.  The chunk (end offset, bytes, lines) joins its
  file's queue; it is done when every share of it is acknowledged.
* **Requests in flight per partition.** A lane hands the Producer at
  most ``max_in_flight`` requests (default 1), each its next queued shares
  merged up to the broker's request limit; while they are out the agent
  reads ahead, so the next request is ready (and large) when an
  acknowledgement comes.
* **Retries, in order.** The Producer's own retries are off (a retried
  batch of the Producer waits out its backoff while the next ones go, so a
  reconnection could put them first).  When a lane's request fails, the
  lane sends nothing more until all its requests in flight are back, then
  sends again from the failed one, later ones included even if they
  succeeded, after a backoff that doubles from ``retry_backoff_ms`` up to
  10 s, for ever.  A connection loss or a broker restart fails all of a
  lane's requests together, so the file's order holds; only a request
  refused while the next one was accepted (``BUSY``, with
  ``max_in_flight`` > 1) puts that next one's lines once before it.
  ``fatal(exc)`` (a message) marks an error no retry can cure (a record
  larger than the broker takes): the agent stops.
* **In-order acknowledgement.** A file's checkpoint moves to a chunk's end
  only when that chunk and every chunk before it in the file are done:
  the file's queue is popped from its head.
* **Back-pressure.** Nothing is read while ``max_inflight_bytes`` are sent
  but not yet in a checkpoint on disk (acknowledged or not), so a slow or
  stopped broker stops the reading, the files are the buffer, and a crash
  re-sends at most that many bytes (plus one read).
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

MAX_BACKOFF = 10.0
#: the record table entry and batch header of hpbroker.batch, for the size of a request
ENTRY_BYTES = 16
BATCH_OVERHEAD = 4096

Send = Callable[[str, int, list, "list | None", Callable[[BaseException | None], None]], None]


class Chunk:
    """One read of one file: done when all its shares (``parts``) are acknowledged."""

    __slots__ = ("file", "gen", "end", "nbytes", "nlines", "parts")

    def __init__(self, file: TrackedFile, gen: int, end: int, nbytes: int, nlines: int):
        self.file = file
        self.gen = gen
        self.end = end
        self.nbytes = nbytes
        self.nlines = nlines
        self.parts = 0


class Share:
    """A chunk's records for one partition."""

    __slots__ = ("chunk", "values", "keys", "size")

    def __init__(self, chunk: Chunk, values: list, keys: list | None, size: int):
        self.chunk = chunk
        self.values = values
        self.keys = keys
        self.size = size  # the bytes it adds to a request (values, keys, record table)


class Request:
    """One ``send`` of a lane: the next ``k`` shares of its queue."""

    __slots__ = ("k", "sent_at", "done", "error")

    def __init__(self, k: int, sent_at: float):
        self.k = k
        self.sent_at = sent_at
        self.done = False
        self.error: BaseException | None = None


class Lane:
    """One partition's queue of shares and its requests in flight (at most
    ``depth``, each holding the shares after the previous one's)."""

    __slots__ = ("topic", "partition", "queue", "requests", "held", "failing", "attempts", "retry_at")

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        self.queue: deque[Share] = deque()
        self.requests: deque[Request] = deque()
        self.held = 0  # shares at the queue's head that requests in flight hold
        self.failing = False  # a request failed: send nothing until all in flight are back, then from it again
        self.attempts = 0  # failed rounds in a row
        self.retry_at = 0.0


class Shipper:
    def __init__(self, agent: Agent, follower: Follower, send: Send, partitions: dict[str, int],
                 clock: Callable[[], float], wake: threading.Event | None = None,
                 note: Callable[[str], None] = lambda s: None,
                 fatal: Callable[[BaseException], str | None] = lambda e: None,
                 max_request_bytes: int = 4 << 20):
        self.agent = agent
        self.follower = follower
        self.send = send
        self.partitions = partitions
        self.clock = clock
        self.wake = wake or threading.Event()
        self.note = note
        self.fatal = fatal
        self.read_bytes = agent.read_bytes
        self.max_inflight = agent.max_inflight_bytes
        self.request_cap = max(max_request_bytes - BATCH_OVERHEAD, 1)
        self.depth = agent.max_in_flight
        self._cut = {s.name: splitter(s, agent.max_record_bytes) for s in agent.sources}
        self._routers: dict[str, Router] = {}
        self.lanes: dict[tuple[str, int], Lane] = {}
        self._done: deque = deque()  # (lane, request, error) from on_done, any thread
        self.inflight_bytes = 0  # read and not yet acknowledged
        self.inflight_chunks = 0
        # acknowledged bytes not yet in a checkpoint on disk count against max_inflight_bytes too
        self.saved_acked_bytes = 0
        # counters for the status line
        self.sent_lines = self.sent_bytes = self.requests = 0
        self.acked_lines = self.acked_bytes = 0
        self.acked_changed = False  # acknowledgements since the agent last took the entries
        self.error: BaseException | None = None  # the last request's error, until a request succeeds
        self.last_ack_at: float | None = None
        self.fatal_message: str | None = None
        self._base_backoff = agent.retry_backoff_ms / 1000.0

    # -- outcomes -------------------------------------------------------------------

    def collect(self) -> int:
        """Apply the outcomes that arrived; return how many requests completed."""
        done = self._done
        n = 0
        lanes: set[Lane] = set()
        now = self.clock()
        while done:
            lane, req, error = done.popleft()
            req.done, req.error = True, error
            lanes.add(lane)
            n += 1
        touched: set[TrackedFile] = set()
        for lane in lanes:
            self._settle(lane, now, touched)
        for f in touched:
            self._advance(f)
        if n:
            self._dispatch(now)
        return n

    def _settle(self, lane: Lane, now: float, touched: set) -> None:
        """Take the lane's completed requests from its head, in order."""
        reqs = lane.requests
        while reqs and reqs[0].done:
            r = reqs.popleft()
            lane.held -= r.k
            if lane.failing:
                continue  # after a failure even a success is sent again, behind the failed one
            if r.error is not None:
                msg = self.fatal(r.error)
                if msg is not None:
                    self.fatal_message = msg
                lane.failing = True
                self.error = r.error
                continue
            lane.attempts = 0
            self.error = None
            self.last_ack_at = now
            q = lane.queue
            for _ in range(r.k):
                chunk = q.popleft().chunk
                chunk.parts -= 1
                if chunk.parts == 0:
                    touched.add(chunk.file)
        if lane.failing and not reqs:
            lane.failing = False
            lane.attempts += 1
            lane.retry_at = now + min(MAX_BACKOFF, self._base_backoff * 2 ** (lane.attempts - 1))

    def _advance(self, f: TrackedFile) -> None:
        q = f.chunks
        while q and q[0].parts == 0:
            c = q.popleft()
            self.inflight_bytes -= c.nbytes
            self.inflight_chunks -= 1
            self.acked_lines += c.nlines
            self.acked_bytes += c.nbytes
            self.acked_changed = True  # also when the position does not move: the count must reach disk
            if c.gen == f.gen:
                f.acked = c.end

    # -- the in-flight bound ------------------------------------------------------------

    def unsaved_bytes(self) -> int:
        """Bytes sent and not yet in a checkpoint on disk: what a crash now would send again."""
        return self.inflight_bytes + self.acked_bytes - self.saved_acked_bytes

    def checkpoint_written(self, acked_bytes: int) -> None:
        """A checkpoint holding every acknowledgement up to the shipper's
        ``acked_bytes`` counter is on disk (any thread)."""
        if acked_bytes is not None and acked_bytes > self.saved_acked_bytes:
            self.saved_acked_bytes = acked_bytes
            self.wake.set()

    def room(self) -> bool:
        return self.inflight_bytes + self.acked_bytes - self.saved_acked_bytes < self.max_inflight

    # -- reading --------------------------------------------------------------------

    def step(self, final: bool = False) -> bool:
        """Read what the in-flight bound allows, and send what the lanes
        let out; True when anything was read or sent."""
        if self.fatal_message is not None:
            return False
        now = self.clock()
        progressed = False
        for f in self.follower.reading_order():
            if not self.room():
                break
            if f.fd is None:
                continue
            while not f.at_eof and self.room():
                if not self._read(f, now, final):
                    break
                progressed = True
                self._dispatch(now)  # an idle lane sends at once, so the broker works while the agent reads on
            if f.at_eof and f.read_pos < f.size and f.size != f.flush_tried and self._flush_due(f, now, final):
                # at the end, with a record or line kept back that may now go: one more read
                f.flush_tried = f.size
                progressed |= self._read(f, now, final)
            if f.removed and f.at_eof and not f.chunks and f.acked >= f.size \
                    and (final or now - f.grew_at >= self.agent.close_inactive_ms / 1000.0):
                self.note(f"{f.path}: read to its end and acknowledged; closed")
                self.follower.forget(f)
                self.acked_changed = True
        return self._dispatch(now) or progressed

    def _flush_due(self, f: TrackedFile, now: float, final: bool) -> bool:
        idle = now - f.grew_at
        return final or (f.removed and idle >= self.agent.close_inactive_ms / 1000.0) \
            or (f.source.start_rx is not None and idle >= f.source.multiline_timeout_ms / 1000.0)

    def _read(self, f: TrackedFile, now: float, final: bool) -> bool:
        """One chunk of ``f``; False when nothing could be sent (the file's
        end, or only part of a line or record so far)."""
        src = f.source
        data = os.pread(f.fd, self.read_bytes, f.read_pos)
        if f.fp.length and f.read_pos and not f.fp.matches(f.fd):
            # truncated and written again since the last scan: these bytes are not the
            # continuation of what was shipped; the next scan restarts the file at 0
            f.at_eof = True
            return False
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
        self._queue(f, cut.records, cut.consumed)
        f.read_pos += cut.consumed
        return True

    def _queue(self, f: TrackedFile, records: list[bytes], nbytes: int) -> None:
        src = f.source
        router = self._routers.get(src.name)
        if router is None:
            router = self._routers[src.name] = Router(src, self.partitions[src.topic])
        if f.partition is None:
            f.partition = path_partition(f.first_path, router.partitions)
        chunk = Chunk(f, f.gen, f.read_pos + nbytes, nbytes, len(records))
        f.chunks.append(chunk)
        self.inflight_bytes += nbytes
        self.inflight_chunks += 1
        self.sent_lines += len(records)
        self.sent_bytes += nbytes
        if not records:
            return  # nothing to send (cannot happen with consumed > 0, but never leave a chunk waiting)
        groups = router.route(records, f.partition)
        chunk.parts = len(groups)
        for part, values, keys in groups:
            lane = self.lanes.get((src.topic, part))
            if lane is None:
                lane = self.lanes[(src.topic, part)] = Lane(src.topic, part)
            size = (nbytes if len(groups) == 1 else sum(map(len, values))) + ENTRY_BYTES * len(values)
            if keys is not None:
                size += sum(len(k) for k in keys if k is not None)
            lane.queue.append(Share(chunk, values, keys, size))

    # -- sending --------------------------------------------------------------------

    def _dispatch(self, now: float) -> bool:
        """Hand each lane's next requests to ``send``, up to ``depth`` in
        flight per lane; True when any went."""
        sent = False
        depth = self.depth
        cap = self.request_cap
        for lane in self.lanes.values():
            q = lane.queue
            while len(lane.requests) < depth and lane.held < len(q) and not lane.failing and now >= lane.retry_at:
                first = lane.held
                k, size = 1, q[first].size
                while first + k < len(q) and size + q[first + k].size <= cap:
                    size += q[first + k].size
                    k += 1
                if k == 1:
                    values, keys = q[first].values, q[first].keys
                else:
                    shares = [q[i] for i in range(first, first + k)]
                    values = []
                    for sh in shares:
                        values += sh.values
                    keys = None
                    if any(sh.keys is not None for sh in shares):
                        keys = []
                        for sh in shares:
                            keys += sh.keys if sh.keys is not None else [None] * len(sh.values)
                req = Request(k, now)
                lane.requests.append(req)
                lane.held += k
                self.requests += 1
                sent = True

                def done(error, lane=lane, req=req):
                    self._done.append((lane, req, error))  # deque.append is atomic: safe from the Producer's thread
                    self.wake.set()

                try:
                    self.send(lane.topic, lane.partition, values, keys, done)
                except Exception as e:  # a send that raises is a failed send
                    done(e)
        return sent

    # -- what the agent asks -----------------------------------------------------------

    def oldest_sent(self) -> float | None:
        """When the oldest request still in flight was sent, or None."""
        times = [lane.requests[0].sent_at for lane in self.lanes.values() if lane.requests]
        return min(times) if times else None

    def next_retry(self) -> float | None:
        times = [lane.retry_at for lane in self.lanes.values() if lane.queue and not lane.requests and lane.attempts]
        return min(times) if times else None

    def drained(self) -> bool:
        """Everything read so far is acknowledged and no file has more to read."""
        return not self.inflight_chunks and all(f.at_eof and f.acked >= f.read_pos for f in self.follower.files.values())
