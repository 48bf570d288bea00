"""``hpbroker ring stat [--instance NAME] [--json]``: the shared-memory rings of running brokers.

Scans /dev/shm for ``hpb.<instance>.<ring>`` segments, and /proc/*/fd for
those a running broker has unlinked (its supervisor keeps their fds; the
names go once every process has them mapped), and maps each one
read-only (it never writes, never takes a semaphore, never unlinks), then
prints per ring: capacity, fill, head/tail positions, the owner, producer
and consumer pids with their heartbeat ages, and whether each pid is alive.
A ring whose owner is dead is marked ``STALE``; ``cleanup_stale`` (run by
a broker at start) removes those.
"""

from __future__ import annotations

import argparse
import json

from hpbroker.commands import UserError
from hpbroker.ring import is_stale, list_segments
from hpbroker.ring.liveness import is_alive, now_ns

_STATES = {0: "-", 1: "attached", 2: "closed"}


def register(sub) -> None:
    p = sub.add_parser("ring", help="inspect the shared-memory rings of running brokers")
    s = p.add_subparsers(dest="ring_command", metavar="ACTION")
    s.required = True
    st = s.add_parser("stat", help="list rings: capacity, fill, positions, pids, heartbeat ages")
    st.add_argument("--instance", help="only this broker instance (e.g. p7600)")
    st.add_argument("--json", action="store_true", help="one JSON object per ring, one per line")
    st.add_argument("--dir", default="/dev/shm", help=argparse.SUPPRESS)  # tests
    st.set_defaults(func=_stat)


def _age_ms(stamp: int) -> float | None:
    return None if not stamp else (now_ns() - stamp) / 1e6


def _row(info: dict) -> dict:
    if not info.get("valid"):
        return {"instance": info["instance"], "ring": info["ring"], "valid": False, "size": info.get("size", 0)}
    cap = info["capacity"]
    fill = max(0, min(info["tail"] - info["head"], cap))
    return {
        "instance": info["instance"],
        "ring": info["ring"],
        "valid": True,
        "unlinked": info.get("unlinked", False),
        "stale": is_stale(info),
        "capacity": cap,
        "alignment": info["alignment"],
        "fill_bytes": fill,
        "fill_pct": 100.0 * fill / cap,
        "head": info["head"],
        "tail": info["tail"],
        "generation": info["generation"],
        "doorbell": info["doorbell"],
        "owner_pid": info["owner_pid"],
        "owner_alive": is_alive(info["owner_pid"], info["owner_start"]),
        "owner_heartbeat_age_ms": _age_ms(info["owner_heartbeat"]),
        "producer_pid": info["producer_pid"],
        "producer_state": _STATES.get(info["producer_state"], "?"),
        "producer_alive": is_alive(info["producer_pid"], info["producer_start"]),
        "producer_heartbeat_age_ms": _age_ms(info["producer_heartbeat"]),
        "producer_waiting": bool(info["producer_waiting"]),
        "consumer_pid": info["consumer_pid"],
        "consumer_state": _STATES.get(info["consumer_state"], "?"),
        "consumer_alive": is_alive(info["consumer_pid"], info["consumer_start"]),
        "consumer_heartbeat_age_ms": _age_ms(info["consumer_heartbeat"]),
        "consumer_waiting": bool(info["consumer_waiting"]),
    }


def _pid(pid: int, alive: bool, age) -> str:
    if not pid:
        return "-"
    a = "?" if age is None else (f"{age / 1000:.1f}s" if age >= 10_000 else f"{age:.0f}ms")
    return f"{pid}{'' if alive else '(dead)'}/{a}"


def _stat(args) -> int:
    rows = [_row(i) for i in list_segments(args.instance, args.dir, include_unlinked=args.dir == "/dev/shm")]
    if not rows:
        where = f" for instance {args.instance!r}" if args.instance else ""
        raise UserError(f"no hpb.* ring segments in {args.dir} or open in /proc{where}", code=1)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    head = f"{'INSTANCE':10} {'RING':16} {'CAPACITY':>10} {'FILL':>7} {'HEAD':>14} {'TAIL':>14}  {'OWNER pid/hb':18} {'PRODUCER pid/hb':20} {'CONSUMER pid/hb':20}"
    print(head)
    for r in rows:
        if not r["valid"]:
            print(f"{r['instance']:10} {r['ring']:16} {'(not a valid ring header, ' + str(r['size']) + ' bytes)'}")
            continue
        print(
            f"{r['instance']:10} {r['ring']:16} {r['capacity']:>10} {r['fill_pct']:>6.1f}% {r['head']:>14} {r['tail']:>14}  "
            f"{_pid(r['owner_pid'], r['owner_alive'], r['owner_heartbeat_age_ms']):18} "
            f"{_pid(r['producer_pid'], r['producer_alive'], r['producer_heartbeat_age_ms']) + ' ' + r['producer_state']:20} "
            f"{_pid(r['consumer_pid'], r['consumer_alive'], r['consumer_heartbeat_age_ms']) + ' ' + r['consumer_state']:20}"
            + ("  STALE" if r["stale"] else "")
        )
    return 0
