"""What the HTTP process knows about its broker, refreshed every ``http.poll_ms``.

Two sources, neither of which makes a data-path process wait:

* the **stats block** (hpbroker/stats), read in place: counters,
  histograms, partition rows, log tails, process pids and heartbeats;
* the broker's **ordinary admin requests** over ZeroMQ, answered by the
  acceptors between client requests like any client's: ``Stats`` (role,
  epoch, replication lag), ``Metadata`` (topics) and the consumer groups
  (``ListGroups``, ``DescribeGroup`` through :class:`hpbroker.client.Admin`).

Every tick also keeps one :class:`Sample` of the rates (the dashboard's
charts) for ``http.history_s`` seconds.  The blocking admin calls run on a
worker thread, one tick at a time, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from hpbroker.client.admin import Admin
from hpbroker.client.request import request
from hpbroker.config import Config
from hpbroker.protocol import messages as m
from hpbroker.stats import StatsBlock
from hpbroker.stats import layout as L
from hpbroker.stats.reader import Snapshot, snapshot

log = logging.getLogger("hpbroker.http")

MAX_GROUPS = 200  # described per tick; more are listed with their member counts only


@dataclass
class Sample:
    t: float  # seconds since the Unix epoch
    produce_msgs: float  # per second, over the last tick
    produce_bytes: float
    fetch_msgs: float
    fetch_bytes: float
    produce_requests: float
    fetch_requests: float
    ack_p50_ms: float | None
    ack_p99_ms: float | None


def quantile(buckets: list[int], bounds: tuple[float, ...], q: float) -> float | None:
    """The ``q`` quantile of a (non-cumulative) bucket histogram, linear
    within the bucket (as Prometheus' histogram_quantile); None when empty."""
    total = sum(buckets)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(buckets):
        if seen + n >= rank and n:
            lo = bounds[i - 1] if i else 0.0
            hi = bounds[i] if i < len(bounds) else bounds[-1]
            return lo + (hi - lo) * (rank - seen) / n
        seen += n
    return bounds[-1]


class BrokerView:
    def __init__(self, cfg: Config, instance: str, endpoints: list[str], block: StatsBlock | None):
        self.cfg = cfg
        self.instance = instance
        self.endpoints = endpoints
        self.block = block
        self.stats: dict = {}  # the last Stats reply
        self.metadata: m.MetadataReply | None = None
        self.groups: list = []  # hpbroker.client.admin.GroupDescription, or GroupListing past MAX_GROUPS
        self.polled_at = 0.0  # monotonic time of the last complete poll
        self.poll_error = ""
        self.history: deque[Sample] = deque(maxlen=max(2, cfg.http.history_s * 1000 // cfg.http.poll_ms))
        self.rates: dict[int, tuple[float, float, float]] = {}  # partition key -> (msgs in/s, bytes in/s, msgs out/s)
        self._last: tuple[float, Snapshot] | None = None
        self._admin: Admin | None = None
        self._keys: dict[str, tuple[int, list[int]]] = {}  # topic -> (partitions, their row keys)

    # -- the tick ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(self._poll)
                self.polled_at = time.monotonic()
                self.poll_error = ""
            except Exception as e:  # noqa: BLE001 - the broker may be busy or stopping: say so in /readyz
                self.poll_error = f"{type(e).__name__}: {e}"
            self.sample()
            await asyncio.sleep(max(0.05, self.cfg.http.poll_ms / 1000 - (time.monotonic() - started)))

    def _poll(self) -> None:
        if self._admin is None:
            self._admin = Admin(self.endpoints[0], request_timeout_ms=2000, connect_timeout_ms=2000)
        rep = request(self.endpoints[0], lambda i: m.Stats(id=i), timeout_ms=2000)
        self.stats = dict(rep.stats)
        self.metadata = self._admin.metadata(None)
        listing = self._admin.list_groups()
        groups = []
        for g in listing[:MAX_GROUPS]:
            try:
                groups.append(self._admin.describe_group(g.group))
            except Exception:  # noqa: BLE001 - gone since the listing
                continue
        self.groups = groups + listing[MAX_GROUPS:]

    def sample(self) -> None:
        if self.block is None:
            return
        now, snap = time.time(), snapshot(self.block)
        if self._last is not None:
            t0, prev = self._last
            dt = max(1e-3, now - t0)
            self.history.append(_rates(prev, snap, dt, now))
            self.rates = {k: ((r["messages_in"] - p.get("messages_in", 0)) / dt,
                              (r["bytes_in"] - p.get("bytes_in", 0)) / dt,
                              (r["messages_out"] - p.get("messages_out", 0)) / dt)
                          for k, r in snap.rows.items() for p in (prev.rows.get(k, {}),)}
        self._last = (now, snap)

    # -- what the handlers read ------------------------------------------------------------

    def topics(self) -> dict[str, int]:
        md = self.metadata
        return {} if md is None else {t.name: len(t.partitions) for t in md.topics if not t.code}

    def partition_keys(self) -> list[tuple[str, int, int]]:
        """(topic, partition, row key) of every partition, by topic and partition."""
        out = []
        for topic, n in sorted(self.topics().items()):
            cached = self._keys.get(topic)
            if cached is None or cached[0] != n:
                cached = self._keys[topic] = (n, [L.partition_key(topic, p) for p in range(n)])
            out += [(topic, p, k) for p, k in enumerate(cached[1])]
        return out

    def snapshot(self) -> Snapshot | None:
        return None if self.block is None else snapshot(self.block)

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()


def _rates(prev: Snapshot, snap: Snapshot, dt: float, now: float) -> Sample:
    def d(a: int, b: int) -> float:
        return max(0, b - a) / dt

    msgs_in = sum(r["messages_in"] for r in snap.rows.values()) - sum(r["messages_in"] for r in prev.rows.values())
    pr = sum(snap.requests["produce"].values()) - sum(prev.requests["produce"].values())
    fr = sum(snap.requests["fetch"].values()) - sum(prev.requests["fetch"].values())
    h = L.HISTOGRAMS[L.HISTOGRAM_INDEX["produce_ack_latency_seconds"]]
    now_b, prev_b = snap.histograms[h.name][0], prev.histograms[h.name][0]
    delta = [max(0, a - b) for a, b in zip(now_b, prev_b)]
    p50, p99 = quantile(delta, h.bounds, 0.5), quantile(delta, h.bounds, 0.99)
    c, pc = snap.counters, prev.counters
    return Sample(now, max(0, msgs_in) / dt, d(pc["appended_bytes"], c["appended_bytes"]),
                  d(pc["fetch_messages"], c["fetch_messages"]), d(pc["fetch_bytes"], c["fetch_bytes"]),
                  max(0, pr) / dt, max(0, fr) / dt,
                  None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)
