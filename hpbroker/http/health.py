"""``/healthz`` and ``/readyz``: for a load balancer, Kubernetes or systemd.

``/healthz`` answers 200 ``{"status": "ok"}`` whenever the HTTP process
runs: the broker's process tree is up (the supervisor stops it with the
broker).  ``/readyz`` answers 200 ``{"ready": true, "checks": {...}}`` only
when the broker can acknowledge produce requests, else 503 with the same
body, ``ready`` false and each failing check saying why:

==============  ==================================================================
check           passes when
==============  ==================================================================
recovered       always once this process runs: the supervisor starts it only after
                every writer recovered its partitions and every acceptor bound
writers         every writer's pid is alive and its heartbeat in the stats block is
                under 5 s old (a writer stamps it at least once a second)
acceptors       the last admin poll (Stats, Metadata, groups over ZeroMQ) answered,
                within 3 poll intervals (at least 3 s)
replication     sync mode only: a master has at least min_insync_replicas - 1
                slaves in sync; a slave is streaming from its master
zookeeper       cluster mode (cluster.zookeeper) only: a master holds its fencing
                lease (ZooKeeper answered within cluster.fence_after_ms and it still
                holds its set's epoch); a slave, always (it acknowledges nothing).
                Without cluster mode: "not configured"
==============  ==================================================================
"""

from __future__ import annotations

import time

from hpbroker.ring.liveness import is_alive

from hpbroker.http.view import BrokerView

WRITER_STALE_S = 5.0


def readiness(view: BrokerView) -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {"recovered": "ok"}
    snap = view.snapshot()
    if snap is None:
        checks["writers"] = "no stats block: cannot see the writers"
    else:
        bad = [f"{p.name} (pid {p.pid}) " + ("is gone" if not is_alive(p.pid) else f"silent for {p.heartbeat_age_s:.1f} s")
               for p in snap.processes if p.kind == "writer"
               and (not is_alive(p.pid) or p.heartbeat_age_s is None or p.heartbeat_age_s > WRITER_STALE_S)]
        checks["writers"] = "; ".join(bad) if bad else "ok"
    fresh = max(3.0, 3 * view.cfg.http.poll_ms / 1000)
    if not view.polled_at:
        checks["acceptors"] = "not polled yet" + (f" ({view.poll_error})" if view.poll_error else "")
    elif time.monotonic() - view.polled_at > fresh:
        checks["acceptors"] = f"no answer for {time.monotonic() - view.polled_at:.1f} s: {view.poll_error or 'busy'}"
    else:
        checks["acceptors"] = "ok"
    checks["replication"] = _replication(view)
    checks["zookeeper"] = _zookeeper(view)
    ready = all(v in ("ok", "not configured", "not required") for v in checks.values())
    return ready, checks


def _replication(view: BrokerView) -> str:
    r = view.cfg.replication
    s = view.stats
    role = s.get("role", r.role)
    if r.mode != "sync" or role == "standalone":
        return "not required"
    if role == "master":
        insync = sum(1 for k, v in s.items() if k.startswith("slave_") and k.endswith("_insync") and v == 1)
        need = r.min_insync_replicas - 1
        return "ok" if insync >= need else f"{insync} slave(s) in sync, min_insync_replicas needs {need}"
    state = s.get("replication_state", "unknown")
    return "ok" if state == "streaming" else f"slave is {state}: {s.get('replication_detail', '')}".rstrip(": ")


def _zookeeper(view: BrokerView) -> str:
    if not view.cfg.cluster.zookeeper:
        return "not configured"
    s = view.stats
    if s.get("role") != "master":
        return "not required"
    if "cluster_fenced" not in s:
        return "not polled yet"
    if s["cluster_fenced"]:
        return ("fenced: no answer from ZooKeeper within cluster.fence_after_ms, or the set's epoch is another "
                "broker's; produce is refused with NOT_LEADER until ZooKeeper answers and the epoch is still ours")
    return "ok"
