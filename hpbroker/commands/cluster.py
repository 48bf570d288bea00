"""``hpbroker cluster status --zookeeper HOST:PORT[/chroot]``: the cluster as ZooKeeper has it.

One line per registered broker: its replica set, id, role, the set's
leader epoch (and who holds it), the broker's own epoch, its lag (asked
of the broker itself: a slave's ``replication_lag_messages``; a master's
slaves' lag and in-sync state), its URL, and the partitions it leads
(``<set>-<p>`` of every topic its master node registered).  A master
whose fencing lease ran out says FENCED instead of its slaves' lag.  A set whose
epoch node names no registered master is shown as ``(no master)``: a
failover is due or under way.  ``--json`` prints the same as one object.
"""

from __future__ import annotations

import json

from hpbroker.commands import UserError


def register(sub) -> None:
    p = sub.add_parser("cluster", help="cluster mode on ZooKeeper: brokers, roles, epochs, lag, partitions")
    csub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    csub.required = True
    s = csub.add_parser("status", help="brokers, roles, epochs, lag and the partitions each leads")
    s.add_argument("--zookeeper", required=True, metavar="HOST:PORT[,...][/chroot]",
                   help="the cluster's ZooKeeper connect string (cluster.zookeeper)")
    s.add_argument("--timeout-ms", type=int, default=2000, metavar="MS",
                   help="how long to wait for ZooKeeper and for each broker's stats (default 2000)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.set_defaults(func=status)
    from hpbroker.commands import _cluster_config

    _cluster_config.register(csub)


def read_cluster(zk) -> list[dict]:
    """Every replica set: its epoch node, and its registered brokers with the partitions the master leads."""
    from kazoo.exceptions import NoNodeError

    from hpbroker.cluster import paths

    def get(path, kind):
        try:
            return paths.decode(zk.get(path)[0], kind)
        except NoNodeError:
            return None

    led: dict[int, list[str]] = {}
    try:
        topics = sorted(zk.get_children(paths.BROKER_TOPICS))
    except NoNodeError:
        topics = []
    for t in topics:
        for child in zk.get_children(paths.topic(t)):
            try:
                rs, kind, _ = paths.parse_topic_child(child)
            except ValueError:
                continue
            if kind == "m":
                n = int(zk.get(f"{paths.topic(t)}/{child}")[0] or b"0")
                led.setdefault(rs, []).append(f"{t}:{rs}-0..{n - 1}" if n > 1 else f"{t}:{rs}-0")
    sets = []
    try:
        ids = sorted(zk.get_children(paths.BROKER_IDS), key=lambda s: int(s) if s.isdigit() else -1)
    except NoNodeError:
        ids = []
    for name in ids:
        if not name.isdigit():
            continue
        rs = int(name)
        epoch = get(paths.epoch(rs), paths.EpochNode)
        brokers = []
        for child in sorted(zk.get_children(paths.replica_set(rs))):
            if child == "master" or child.startswith("slave"):
                node = get(f"{paths.replica_set(rs)}/{child}", paths.BrokerNode)
                if node is not None:
                    brokers.append(node)
        sets.append({"replica_set": rs, "epoch": epoch, "brokers": brokers, "leads": led.get(rs, [])})
    return sets


def lag_of(node, timeout_ms: int) -> str:
    """The broker's own word on its lag, or why there is none."""
    from hpbroker.client.request import request
    from hpbroker.protocol import messages as m

    try:
        st = request(node.url, lambda i: m.Stats(id=i), timeout_ms, connect_timeout_ms=timeout_ms).stats
    except Exception as e:  # noqa: BLE001 - a broker that does not answer is shown as such
        return f"no answer ({type(e).__name__})"
    if node.role == "slave":
        return f"{st.get('replication_lag_messages', '?')} msgs ({st.get('replication_state', '?')})"
    if st.get("cluster_fenced"):
        return "FENCED (no answer from ZooKeeper within cluster.fence_after_ms)"
    parts = [f"slave {k.split('_')[1]}: {v} msgs{'' if st.get(k.replace('lag_messages', 'insync')) else ' (out of sync)'}"
             for k, v in sorted(st.items()) if k.startswith("slave_") and k.endswith("_lag_messages")]
    return ", ".join(parts) or "no slaves"


def status(args) -> int:
    from hpbroker.cluster import shared_config
    from hpbroker.commands._zk import close, connect

    zk = connect(args.zookeeper, max(1.0, args.timeout_ms / 1000.0))
    try:
        sets = read_cluster(zk)
        shared = shared_config.read(zk)
        shared_version = shared[0].version if shared else -1
    finally:
        close(zk)
    rows = []
    for s in sets:
        ep = s["epoch"]
        holder = f"{ep.epoch} (broker {ep.broker_id})" if ep else "-"
        if not any(b.role == "master" for b in s["brokers"]):
            rows.append({"set": s["replica_set"], "broker": "-", "role": "(no master)", "set_epoch": holder,
                         "epoch": "-", "lag": "-", "url": "-", "leads": "", "config": "-"})
        for b in sorted(s["brokers"], key=lambda b: (b.role != "master", b.broker_id)):
            rows.append({"set": s["replica_set"], "broker": b.broker_id, "role": b.role, "set_epoch": holder,
                         "epoch": b.epoch, "lag": lag_of(b, args.timeout_ms), "url": b.url,
                         "leads": " ".join(s["leads"]) if b.role == "master" else "",
                         "insync": b.insync if b.role == "master" else None,
                         "config": _config_cell(b.config_version, shared_version)})
    if args.json:
        print(json.dumps({"brokers": rows}, default=str))
        return 0
    if not rows:
        print("no brokers registered")
        return 0
    cols = ["set", "broker", "role", "set_epoch", "epoch", "lag", "config", "url", "leads"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0


def _config_cell(runs: int, latest: int) -> str:
    """The shared settings' version a broker runs, and whether it is behind ZooKeeper's."""
    if latest < 0 and runs < 0:
        return "-"
    here = "none" if runs < 0 else f"v{runs}"
    return here if runs == latest else f"{here} (v{latest} in ZooKeeper: restart to apply)"
