"""The JSON API the dashboard reads (documented in docs/http.md, "Dashboard API").

=====================  ======================================================
route                  body
=====================  ======================================================
GET /api/overview      role, epoch, ids, version, uptime, data dir and disk
                       free, endpoints, readiness, totals
GET /api/topics        one row per partition: offsets, size, live rates
GET /api/groups        consumer groups: state, members and assignment, lag
GET /api/replication   the replication entries of the broker's Stats reply
GET /api/config        the effective configuration (every section)
GET /api/logs?limit=N  the last log lines of every broker process
GET /api/history       the rate samples behind the charts, oldest first
GET /api/processes     each broker process: pid, CPU seconds, RSS, heartbeat
=====================  ======================================================

Every handler reads :class:`BrokerView` (the last poll and the stats block);
none of them sends a request to the broker.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import msgspec
import psutil
from aiohttp import web

import hpbroker

from hpbroker.http.health import readiness
from hpbroker.http.view import BrokerView

_encode = msgspec.json.Encoder().encode


def _json(obj) -> web.Response:
    return web.Response(body=_encode(obj), content_type="application/json")


class DashboardApi:
    def __init__(self, view: BrokerView, supervisor_pid: int, started: float):
        self.view = view
        self.supervisor_pid = supervisor_pid
        self.started = started  # the broker's start, seconds since the epoch

    def routes(self) -> list:
        return [web.get("/api/overview", self.overview), web.get("/api/topics", self.topics),
                web.get("/api/groups", self.groups), web.get("/api/replication", self.replication),
                web.get("/api/config", self.config), web.get("/api/logs", self.logs),
                web.get("/api/history", self.history), web.get("/api/processes", self.processes)]

    async def overview(self, request: web.Request) -> web.Response:
        v = self.view
        s, md, cfg = v.stats, v.metadata, v.cfg
        try:
            disk = shutil.disk_usage(cfg.broker.data_dir)
            free, total = disk.free, disk.total
        except OSError:
            free = total = None
        ready, checks = readiness(v)
        snap = v.snapshot()
        rows = snap.rows if snap else {}
        last = v.history[-1] if v.history else None
        return _json({
            "version": hpbroker.__version__, "instance": v.instance, "role": s.get("role") or (md.role if md else ""),
            "leader_epoch": s.get("leader_epoch", md.leader_epoch if md else None),
            "broker_id": md.broker_id if md else cfg.broker.broker_id,
            "cluster_id": md.cluster_id if md else cfg.broker.cluster_id,
            "uptime_s": round(time.time() - self.started, 1), "data_dir": cfg.broker.data_dir,
            "disk_free_bytes": free, "disk_total_bytes": total, "endpoints": v.endpoints,
            "flush_mode": cfg.log.flush_mode, "ready": ready, "checks": checks,
            "topics": len(v.topics()), "partitions": sum(v.topics().values()),
            "messages_in": sum(r["messages_in"] for r in rows.values()),
            "log_bytes": sum(r["size_bytes"] for r in rows.values()),
            "pending_requests": s.get("pending_requests"),
            "rates": None if last is None else dataclasses.asdict(last),
        })

    async def topics(self, request: web.Request) -> web.Response:
        v = self.view
        snap = v.snapshot()
        rows = snap.rows if snap else {}
        out = []
        for topic, p, key in v.partition_keys():
            r = rows.get(key, {})
            rin, bin_, rout = v.rates.get(key, (0.0, 0.0, 0.0))
            out.append({"topic": topic, "partition": p, "log_start": r.get("log_start", 0),
                        "log_end": r.get("log_end", 0), "size_bytes": r.get("size_bytes", 0),
                        "messages_in": r.get("messages_in", 0), "messages_out": r.get("messages_out", 0),
                        "in_per_s": round(rin, 1), "bytes_in_per_s": round(bin_, 1), "out_per_s": round(rout, 1)})
        return _json(out)

    async def groups(self, request: web.Request) -> web.Response:
        out = []
        for g in self.view.groups:
            if not hasattr(g, "partitions"):  # listed only (past MAX_GROUPS)
                out.append({"group": g.group, "state": g.state, "members": [], "member_count": g.members,
                            "partitions": [], "lag": None})
                continue
            out.append({"group": g.group, "state": g.state, "assignor": g.assignor, "group_epoch": g.group_epoch,
                        "member_count": len(g.members),
                        "members": [{"member_id": mem.member_id, "instance_id": mem.instance_id,
                                     "client_host": mem.client_host, "assignment": mem.assignment,
                                     "last_heartbeat_ms_ago": mem.last_heartbeat_ms_ago} for mem in g.members],
                        "partitions": [p._asdict() for p in g.partitions], "lag": g.lag})
        return _json(out)

    async def replication(self, request: web.Request) -> web.Response:
        s = self.view.stats
        out = {k: v for k, v in s.items() if k.startswith(("replication", "slave_", "fetch_bound", "promoted_from",
                                                            "messages_awaiting"))}
        out.setdefault("replication_role", s.get("role", self.view.cfg.replication.role))
        if out["replication_role"] != "standalone":
            out["mode"] = self.view.cfg.replication.mode
        return _json(out)

    async def config(self, request: web.Request) -> web.Response:
        return _json(msgspec.to_builtins(self.view.cfg))

    async def logs(self, request: web.Request) -> web.Response:
        from hpbroker.stats.reader import log_lines

        try:
            limit = max(1, min(1000, int(request.query.get("limit", "100"))))
        except ValueError:
            limit = 100
        block = self.view.block
        lines = [] if block is None else log_lines(block, limit)
        return _json([{"time": ts / 1e9, "process": proc, "level": level, "text": text}
                      for ts, proc, level, text in lines])

    async def history(self, request: web.Request) -> web.Response:
        return _json([dataclasses.asdict(s) for s in self.view.history])

    async def processes(self, request: web.Request) -> web.Response:
        snap = self.view.snapshot()
        procs = [(p.name, p.pid, p.heartbeat_age_s) for p in (snap.processes if snap else [])
                 if p.pid and p.name not in ("supervisor", "http")]
        procs += [("supervisor", self.supervisor_pid, None), ("http", os.getpid(), None)]
        out = []
        for name, pid, age in procs:
            try:
                ps = psutil.Process(pid)
                t, mem = ps.cpu_times(), ps.memory_info().rss
            except psutil.Error:
                continue
            out.append({"process": name, "pid": pid, "cpu_seconds": round(t.user + t.system, 2), "rss_bytes": mem,
                        "heartbeat_age_s": None if age is None else round(age, 2)})
        return _json(sorted(out, key=lambda r: r["process"]))
