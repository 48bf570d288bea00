"""The agent's loop: scan, read and send, collect acknowledgements,
checkpoint, report; and its orderly stop.

``Agent(config, send, partitions, ...)`` takes its resources as
parameters: the send function, the partition counts, the checkpoint
store, the clock and the stderr writer, so tests drive it without a
broker.  :meth:`Agent.run` returns when ``stop`` is set (SIGTERM/SIGINT in
the command) or, with ``once``, when every file has been read to its end
and acknowledged.  On the way out it stops reading, waits up to
``shutdown_timeout_ms`` for what is in flight, and writes the checkpoint
(acknowledged positions only: what was not acknowledged is read again at
the next start).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from hpbroker.tail.checkpoint import CheckpointStore, CheckpointWriter
from hpbroker.tail.config import Agent as AgentConfig
from hpbroker.tail.follower import Follower
from hpbroker.tail.shipper import Send, Shipper
from hpbroker.tail.status import BrokerState, Status


class Agent:
    def __init__(self, config: AgentConfig, send: Send, partitions: dict[str, int], store: CheckpointStore, *,
                 clock: Callable[[], float] = time.monotonic, err: Callable[[str], None] = print,
                 quiet: bool = False, fatal: Callable[[BaseException], str | None] = lambda e: None,
                 max_request_bytes: int = 4 << 20):
        self.config = config
        self.clock = clock
        self.err = err
        self.quiet = quiet
        self.wake = threading.Event()
        note = (lambda s: None) if quiet else err
        self.follower = Follower(config, clock, note=note)
        self.shipper = Shipper(config, self.follower, send, partitions, clock, wake=self.wake,
                               note=note, fatal=fatal, max_request_bytes=max_request_bytes)
        self.store = store
        self.writer = CheckpointWriter(store, config.checkpoint_interval_ms / 1000.0, on_error=self._checkpoint_error,
                                       on_written=self.shipper.checkpoint_written)
        self.status = Status(config.status_interval_ms / 1000.0, clock)
        self.broker = BrokerState(config.broker_stall_ms / 1000.0, config.retry_backoff_ms / 1000.0,
                                  config.max_inflight_bytes)

    def _checkpoint_error(self, e: BaseException | None) -> None:
        if e is None:
            self.err("checkpoint written again")
        else:
            self.err(f"cannot write the checkpoint {self.store.path}: {e}; retrying (shipping goes on; a restart "
                     "would re-send from the last checkpoint written)")

    def run(self, stop: threading.Event, once: bool = False) -> int:
        """Follow until ``stop`` (or, with ``once``, until drained); 0, or 1
        after a fatal error (a record the broker can never take)."""
        cfg = self.config
        poll = cfg.poll_interval_ms / 1000.0
        ship = self.shipper
        self.follower.restore(self.store.load())
        next_scan = self.clock()
        next_state = 0.0
        try:
            while not stop.is_set():
                now = self.clock()
                ship.collect()
                if ship.fatal_message is not None:
                    break
                if now >= next_scan:
                    self.follower.scan()
                    next_scan = now + poll
                progressed = ship.step(final=once)
                if ship.acked_changed:
                    ship.acked_changed = False
                    self.writer.submit(self.follower.entries(), ship.acked_bytes)
                if now >= next_state:
                    msg = self.broker.update(now, ship.oldest_sent(), ship.last_ack_at, ship.error, ship.unsaved_bytes())
                    if msg:
                        self.err(msg)
                    next_state = now + 0.2
                if not self.quiet and self.status.due():
                    self.err(self.status.line(ship))
                if once and ship.drained() and self._all_scanned():
                    break
                if not progressed:
                    due = min(next_scan, next_state, ship.next_retry() or next_scan)
                    self.wake.wait(max(0.0, due - self.clock()))
                    self.wake.clear()
        finally:
            code = self._stop()
        return code

    def _all_scanned(self) -> bool:
        return all(f.read_pos >= f.size for f in self.follower.files.values())

    def _stop(self) -> int:
        """Stop reading; wait (bounded) for what is in flight; write the checkpoint."""
        ship = self.shipper
        deadline = self.clock() + self.config.shutdown_timeout_ms / 1000.0
        while ship.inflight_chunks and ship.fatal_message is None and self.clock() < deadline:
            self.wake.wait(0.05)
            self.wake.clear()
            ship.collect()
        left = ship.inflight_bytes
        ok = self.writer.close(self.follower.entries())
        self.follower.close_all()
        if ship.fatal_message is not None:
            self.err(f"stopped: {ship.fatal_message}")
            return 1
        if left:
            self.err(f"stopped with {left} bytes unacknowledged after {self.config.shutdown_timeout_ms} ms: "
                     "they are read again at the next start")
        if not self.quiet:
            self.err(f"stopped: {ship.acked_lines:,} lines ({ship.acked_bytes:,} bytes) acknowledged; checkpoint "
                     + ("written" if ok else "NOT written (see above)"))
        return 0
