"""``hpbroker-bench --curve``: the same workload on a broker without CURVE
and on one with ``[security] curve = true``, in pairs, in one invocation.

The CURVE broker gets a key pair, one client key pair ("bench") and an ACL
that grants it everything, all written into its own temp dir
(:func:`secure`); every bench client (Admin, Producer, Consumer, raw DEALER
sockets) then connects with that key.  ``--pairs N`` runs N pairs,
alternating which broker goes first, so a machine that drifts during the
invocation favours neither; ``curve_vs_plain`` is the median pair's ratio
(``statistics.median_low``: one pair's measured ratio), and the top-level
and ``baselines.plain`` figures are that pair's.
"""

from __future__ import annotations

import os
import statistics
import sys

ACL = """[[allow]]
principals = ["bench"]
actions = ["produce", "consume", "admin"]
"""


def secure(root: str) -> tuple[list[str], dict]:
    """Keys, trusted keys and an ACL in ``root``; -> (extra ``serve``
    arguments, the clients' keyword arguments)."""
    import zmq.auth

    keys, trusted = os.path.join(root, "keys"), os.path.join(root, "authorized")
    os.makedirs(keys, mode=0o700), os.makedirs(trusted, mode=0o700)
    broker_public, broker_secret = zmq.auth.create_certificates(keys, "broker")
    bench_public, bench_secret = zmq.auth.create_certificates(keys, "bench")
    with open(bench_public, "rb") as src, open(os.path.join(trusted, "bench.key"), "wb") as dst:
        dst.write(src.read())
    acl = os.path.join(root, "acl.toml")
    with open(acl, "w") as f:
        f.write(ACL)
    cfg = os.path.join(root, "curve.toml")
    with open(cfg, "w") as f:
        f.write(f'[security]\ncurve = true\nserver_secret_key_file = "{broker_secret}"\n'
                f'authorized_keys_dir = "{trusted}"\nacl_file = "{acl}"\n')
    return ["--config", cfg], {"curve_secret_key_file": bench_secret, "broker_public_key": broker_public}


def run_pairs(args, baselines: set, run_once) -> tuple[dict, dict]:
    """``--pairs`` plain/CURVE pairs; -> (the CURVE run, the plain run) of
    the median pair, every pair listed under ``pairs``."""
    pairs, extra = [], None
    for i in range(args.pairs):
        runs = {}
        for curve in ((False, True) if i % 2 == 0 else (True, False)):
            runs[curve] = r = run_once(args, None, baselines if curve and extra is None else set(), curve=curve)
            if curve and extra is None:
                extra = r.get("baselines") or {}
        on, off = runs[True], runs[False]
        ratio = (on.get("msgs_per_s") or 0.0) / off["msgs_per_s"] if off.get("msgs_per_s") else 0.0
        pairs.append((ratio, i, on, off))
        if not args.no_progress:
            print(f"pair {i + 1}/{args.pairs}: plain {off.get('msgs_per_s', 0):,.0f} msgs/s, CURVE "
                  f"{on.get('msgs_per_s', 0):,.0f} msgs/s, ratio {ratio:.3f}", file=sys.stderr)
    chosen = statistics.median_low([(ratio, i) for ratio, i, _, _ in pairs])[1]
    listed = []
    for ratio, i, on, off in pairs:
        listed.append({"first": "plain" if i % 2 == 0 else "curve", "ratio": ratio,
                       "curve_msgs_per_s": on.get("msgs_per_s"), "plain_msgs_per_s": off.get("msgs_per_s"),
                       "curve_p99_ms": on.get("p99_ms"), "plain_p99_ms": off.get("p99_ms"),
                       "curve_cpu_per_m_msgs": on.get("cpu_per_m_msgs"),
                       "plain_cpu_per_m_msgs": off.get("cpu_per_m_msgs"),
                       "ok": bool(on.get("ok") and off.get("ok"))})
        if i != chosen:
            _drop(on), _drop(off)
    _, _, result, plain = pairs[chosen]
    result["baselines"] = dict(extra or {})
    result["ok"] = all(p["ok"] for p in listed)
    result["curve_vs_plain"] = pairs[chosen][0]
    result["pairs"] = listed
    result["median_pair"] = chosen
    return result, _drop(plain)


def _drop(r: dict) -> dict:
    for k in ("_timeline", "_lat", "_e2e_lat"):
        r.pop(k, None)
    return r
