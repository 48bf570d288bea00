"""``/metrics``: a prometheus_client collector over the broker's own numbers.

Nothing is kept in prometheus_client's own metric objects: each scrape
reads the stats block (counters, histograms, partition rows, process pids)
in place, the rings' headers (fill), ``/proc`` through psutil (CPU, RSS),
and the last answers of the broker's admin requests (:class:`BrokerView`:
role, epoch, replication lag, consumer-group lag).

Cardinality is bounded by ``http.metrics_max_partitions`` (docs/http.md):
up to that many partitions get one series each per per-partition metric;
past it, and for consumer-group lag rows past it, the series are per topic
with ``partition="all"`` (sums), and ``hpbroker_metrics_partitions_folded``
says how many partitions were folded.  Everything else has a fixed label
set (request kinds x error codes seen, histograms, processes, rings).
"""

from __future__ import annotations

import os
from collections import defaultdict

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

import hpbroker
from hpbroker.protocol.errors import code_name
from hpbroker.ring import list_segments
from hpbroker.stats import layout as L

from hpbroker.http.view import BrokerView

_PARTITION_METRICS = (
    # (row field, name, kind, help)
    ("messages_in", "hpbroker_messages_in", "counter", "Messages appended to the partition's log since the broker started (durable in durable mode)."),
    ("bytes_in", "hpbroker_bytes_in", "counter", "Record-batch bytes appended to the partition's log since the broker started."),
    ("messages_out", "hpbroker_messages_out", "counter", "Offsets fetch replies advanced over (messages sent to consumers and slaves' catch-up excluded)."),
    ("bytes_out", "hpbroker_bytes_out", "counter", "Bytes of fetch replies."),
    ("log_start", "hpbroker_log_start_offset", "gauge", "First offset still in the log."),
    ("log_end", "hpbroker_log_end_offset", "gauge", "High watermark: the next offset to be written, everything below durable."),
    ("size_bytes", "hpbroker_log_size_bytes", "gauge", "Bytes of the partition's segment files (updated once a second)."),
)
_COUNTERS = (
    ("produce_request_bytes", "hpbroker_produce_request_bytes", "Payload bytes of produce requests handed to the writers."),
    ("fetch_bytes", "hpbroker_fetch_bytes", "Bytes of fetch replies, every partition."),
    ("fetch_messages", "hpbroker_fetch_messages", "Offsets fetch replies advanced over, every partition."),
    ("rounds", "hpbroker_group_commit_rounds", "Group-commit rounds the writers started."),
    ("appended_bytes", "hpbroker_appended_bytes", "Batch bytes the writers appended."),
    ("rows_full", "hpbroker_stats_rows_full", "Partitions a process could not give a stats row (raise http.stats_rows)."),
    ("http_requests", "hpbroker_http_requests", "Requests the HTTP process served."),
    ("http_produced_messages", "hpbroker_http_produced_messages", "Messages acknowledged through the HTTP gateway."),
    ("http_fetched_messages", "hpbroker_http_fetched_messages", "Messages returned through the HTTP gateway."),
    ("http_rate_limited", "hpbroker_http_rate_limited", "Gateway requests refused by http.rate_limit_per_s (429)."),
)
_HISTOGRAM_HELP = {
    "produce_ack_latency_seconds": "Produce request arrival at the acceptor to its ack (acks=1/all; durable in durable mode).",
    "group_commit_batches": "Batches per group-commit round.",
    "group_commit_bytes": "Bytes per group-commit round.",
    "fdatasync_seconds": "Duration of each fdatasync of a partition's segment.",
    "http_request_seconds": "Gateway request in to response out, in the HTTP process.",
}


class BrokerCollector(Collector):
    def __init__(self, view: BrokerView, supervisor_pid: int):
        self.view = view
        self.supervisor_pid = supervisor_pid
        self._procs: dict[int, psutil.Process] = {}

    def collect(self):
        v = self.view
        snap = v.snapshot()
        yield from self._broker(v)
        if snap is not None:
            yield from self._partitions(v, snap)
            yield from self._totals(snap)
            yield from self._processes(snap)
        yield from self._rings(v)
        yield from self._replication(v)
        yield from self._groups(v)

    # -- broker ---------------------------------------------------------------------------

    def _broker(self, v: BrokerView):
        s, md = v.stats, v.metadata
        role = s.get("role") or (md.role if md else "") or "unknown"
        info = GaugeMetricFamily("hpbroker_info", "The broker: version, instance, role, ids (value 1).",
                                 labels=["version", "instance", "role", "broker_id", "cluster_id"])
        info.add_metric([hpbroker.__version__, v.instance, role, str(md.broker_id if md else v.cfg.broker.broker_id),
                         md.cluster_id if md else v.cfg.broker.cluster_id], 1)
        yield info
        up = GaugeMetricFamily("hpbroker_broker_answering", "1 when the last admin poll of the acceptors succeeded.")
        up.add_metric([], 1 if v.poll_error == "" and v.polled_at else 0)
        yield up
        g = GaugeMetricFamily("hpbroker_leader_epoch", "The broker's leader epoch.")
        g.add_metric([], int(s.get("leader_epoch", md.leader_epoch if md else 0) or 0))
        yield g
        r = GaugeMetricFamily("hpbroker_replication_role", "1 for this broker's role.", labels=["role"])
        for name in ("standalone", "master", "slave"):
            r.add_metric([name], 1 if role == name else 0)
        yield r

    # -- per partition, bounded ----------------------------------------------------------------

    def _partitions(self, v: BrokerView, snap):
        parts = v.partition_keys()
        cap = v.cfg.http.metrics_max_partitions
        fold = len(parts) > cap
        fams = [(field, CounterMetricFamily(name, doc, labels=["topic", "partition"]) if kind == "counter"
                 else GaugeMetricFamily(name, doc, labels=["topic", "partition"]))
                for field, name, kind, doc in _PARTITION_METRICS]
        rows = snap.rows
        if fold:
            sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for topic, _, key in parts:
                r = rows.get(key)
                if r is not None:
                    acc = sums[topic]
                    for field, _ in fams:
                        acc[field] += r[field]
            for topic in sorted(sums):
                for field, fam in fams:
                    fam.add_metric([topic, "all"], sums[topic][field])
        else:
            for topic, p, key in parts:
                r = rows.get(key)
                if r is not None:
                    for field, fam in fams:
                        fam.add_metric([topic, str(p)], r[field])
        yield from (fam for _, fam in fams)
        folded = GaugeMetricFamily("hpbroker_metrics_partitions_folded",
                                   "Partitions exported per topic only (more than http.metrics_max_partitions).")
        folded.add_metric([], len(parts) if fold else 0)
        yield folded
        count = GaugeMetricFamily("hpbroker_partitions", "Partitions of all topics.")
        count.add_metric([], len(parts))
        yield count

    # -- totals, requests, histograms -----------------------------------------------------------

    def _totals(self, snap):
        for field, name, doc in _COUNTERS:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], snap.counters[field])
            yield c
        req = CounterMetricFamily("hpbroker_requests", "Replies by request kind and error code (OK = 0); acks=0 "
                                  "produce requests refused without a reply count too.", labels=["request", "code"])
        for kind in L.REQUEST_KINDS:
            codes = snap.requests[kind]
            req.add_metric([kind, "OK"], codes.get(0, 0))  # always there, so rate() has a series from the start
            for code in sorted(codes):
                if code:
                    req.add_metric([kind, "INTERNAL" if code == L.CODE_SLOTS - 1 else code_name(code)], codes[code])
        yield req
        busy = CounterMetricFamily("hpbroker_backpressure_events", "Produce requests refused with BUSY (a full ring "
                                   "or broker.max_pending_requests reached).")
        busy.add_metric([], snap.requests["produce"].get(6, 0))
        yield busy
        for name, doc in (("pending_requests", "Produce requests waiting for their writer."),
                          ("parked_fetch_partitions", "Partitions with long-poll fetches waiting for data.")):
            g = GaugeMetricFamily(f"hpbroker_{name}", doc)
            g.add_metric([], snap.gauges[name])
            yield g
        for h in L.HISTOGRAMS:
            buckets, total, count = snap.histograms[h.name]
            cum, running = [], 0
            for bound, n in zip(list(h.bounds) + [float("inf")], buckets):
                running += n
                cum.append(("+Inf" if bound == float("inf") else _fmt(bound), running))
            fam = HistogramMetricFamily(f"hpbroker_{h.name}", _HISTOGRAM_HELP[h.name])
            fam.add_metric([], cum, sum_value=total)
            yield fam

    # -- processes --------------------------------------------------------------------------------

    def _processes(self, snap):
        cpu = CounterMetricFamily("hpbroker_process_cpu_seconds", "CPU time (user + system) of each broker process.",
                                  labels=["process"])
        rss = GaugeMetricFamily("hpbroker_process_resident_memory_bytes", "Resident memory of each broker process.",
                                labels=["process"])
        age = GaugeMetricFamily("hpbroker_process_heartbeat_age_seconds", "Seconds since the process last stamped "
                                "its stats slot (writers at least every second, acceptors every half second).",
                                labels=["process"])
        pids = {p.name: p.pid for p in snap.processes if p.pid}
        pids["supervisor"] = self.supervisor_pid
        pids["http"] = os.getpid()
        for name, pid in sorted(pids.items()):
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                t = proc.cpu_times()
                mem = proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            cpu.add_metric([name], t.user + t.system)
            rss.add_metric([name], mem)
        for p in snap.processes:
            if p.heartbeat_age_s is not None and p.kind in ("acceptor", "writer"):
                age.add_metric([p.name], round(p.heartbeat_age_s, 3))
        yield cpu
        yield rss
        yield age

    # -- rings ----------------------------------------------------------------------------------------

    def _rings(self, v: BrokerView):
        used = GaugeMetricFamily("hpbroker_ring_used_bytes", "Bytes waiting in each acceptor-to-writer ring.",
                                 labels=["ring"])
        cap = GaugeMetricFamily("hpbroker_ring_capacity_bytes", "Data capacity of each ring.", labels=["ring"])
        for info in list_segments(v.instance, include_unlinked=True):  # names unlinked while it serves
            if info.get("valid"):
                used.add_metric([info["ring"]], max(0, min(info["tail"] - info["head"], info["capacity"])))
                cap.add_metric([info["ring"]], info["capacity"])
        yield used
        yield cap

    # -- replication ------------------------------------------------------------------------------------

    def _replication(self, v: BrokerView):
        s = v.stats
        fams = {k: GaugeMetricFamily(f"hpbroker_replication_lag_{k}", doc, labels=["replica"]) for k, doc in (
            ("messages", "Messages the replica (a slave, by broker id) does not hold yet, summed over partitions."),
            ("bytes", "Bytes the replica does not hold yet (on the master)."),
            ("seconds", "Age of the oldest message the replica does not hold yet (on the master)."))}
        insync = GaugeMetricFamily("hpbroker_replication_in_sync", "1 while the replica is in sync (on the master).",
                                   labels=["replica"])
        for key, value in s.items():
            if key.startswith("slave_") and isinstance(value, (int, float)):
                sid, _, what = key[len("slave_"):].partition("_")
                if what == "insync":
                    insync.add_metric([sid], value)
                elif what.startswith("lag_") and what[4:] in fams:
                    fams[what[4:]].add_metric([sid], value)
        if s.get("replication_role") == "slave" and isinstance(s.get("replication_lag_messages"), (int, float)):
            fams["messages"].add_metric([str(v.cfg.broker.broker_id)], s["replication_lag_messages"])
        yield from fams.values()
        yield insync

    # -- consumer groups ----------------------------------------------------------------------------------

    def _groups(self, v: BrokerView):
        lag = GaugeMetricFamily("hpbroker_consumer_group_lag", "Messages between a group's committed offset and the "
                                "high watermark.", labels=["group", "topic", "partition"])
        members = GaugeMetricFamily("hpbroker_consumer_group_members", "Live members of each group.", labels=["group"])
        described = [g for g in v.groups if hasattr(g, "partitions")]
        rows = sum(len(g.partitions) for g in described)
        fold = rows > v.cfg.http.metrics_max_partitions
        for g in v.groups:
            members.add_metric([g.group], len(g.members) if hasattr(g, "partitions") else g.members)
        for g in described:
            if fold:
                sums: dict[str, int] = defaultdict(int)
                for p in g.partitions:
                    sums[p.topic] += p.lag
                for topic in sorted(sums):
                    lag.add_metric([g.group, topic, "all"], sums[topic])
            else:
                for p in g.partitions:
                    lag.add_metric([g.group, p.topic, str(p.partition)], p.lag)
        yield lag
        yield members


def _fmt(b: float) -> str:
    return repr(float(b)) if b != int(b) or b < 1 else str(float(b))
