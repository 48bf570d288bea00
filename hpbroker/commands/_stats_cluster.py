"""``hpbroker stats --broker zk://HOST:PORT[/chroot] [ITEM]``: every broker of a cluster, then its totals.

The brokers are those registered in the cluster's ZooKeeper (as
``hpbroker cluster status`` lists them), each replica set's master first.
Each is asked what ``hpbroker stats`` would ask it alone: its own counters
over ZeroMQ, or with ITEM (or ``--text``) MetaQ's stats item of its text
listener, at the text port it registered.  Output, one block per broker::

    BROKER set=1 id=1 role=master url=tcp://10.0.0.1:7600
    STAT messages 1200
    ...
    END

then, for the general items, one ``CLUSTER`` block: the additive counters
(:data:`ADDITIVE`) summed over the masters, which take every write (a
slave's copies would count them twice).  A broker that does not answer gets
an ``ERROR`` line in its block, the others are still shown, and the exit
code is 1.  ``--json``: ``{"brokers": [{..., "stats": {...}} or
{..., "error": "..."}], "cluster": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import re

from hpbroker.commands import UserError

#: counters that add up over brokers: sums of events, bytes, messages and connections (not ids, ports,
#: uptimes, averages, fill levels or names)
ADDITIVE = re.compile(r"^(broker_)?(cmd_\w+|tx_\w+|get_(miss|messages|bytes)|put_(failed|requests|batches|acked|runs)"
                      r"|bytes_(read|written)|total_(messages|connections)|curr_connections|bad_commands"
                      r"|messages|partitions|pending_requests|offset_commits|offset_commit_failures"
                      r"|transactions_\w+|transaction_\w+|scrub_(batches|bytes|findings|index_findings)"
                      r"|group_members|group_rebalances|group_partitions_moved)$")


def run_cluster(args) -> int:
    from hpbroker.cluster.client_view import parse_zk_url
    from hpbroker.commands._zk import close, connect
    from hpbroker.commands.cluster import read_cluster

    try:
        hosts = parse_zk_url(args.broker)
    except ValueError as e:
        raise UserError(f"--broker: {e}", 2) from None
    zk = connect(hosts, max(1.0, args.connect_timeout_ms / 1000.0))
    try:
        sets = read_cluster(zk)
    finally:
        close(zk)
    nodes = [b for s in sets for b in sorted(s["brokers"], key=lambda b: (b.role != "master", b.broker_id))]
    if not nodes:
        raise UserError(f"no brokers registered in ZooKeeper at {hosts}", 1)
    text = args.item is not None or args.text or bool(args.text_port)
    rows = [_ask(node, args, text) for node in nodes]
    general = not (args.item or "").strip()
    cluster = totals([r["stats"] for r in rows if r["role"] == "master" and "stats" in r]) if general else None
    if args.json:
        out = {"brokers": rows}
        if cluster is not None:
            out["cluster"] = cluster
        print(json.dumps(out, default=str))
    else:
        for r in rows:
            print(f"BROKER set={r['replica_set']} id={r['broker_id']} role={r['role']} url={r['url']}")
            if "error" in r:
                print(f"ERROR {r['error']}")
            else:
                for k, v in (sorted(r["stats"].items()) if not text else r["stats"].items()):
                    print(f"STAT {k} {v}")
            print("END")
        if cluster is not None:
            masters = sum(1 for r in rows if r["role"] == "master")
            print(f"CLUSTER masters={masters} brokers={len(rows)}")
            for k, v in sorted(cluster.items()):
                print(f"STAT {k} {v}")
            print("END")
    return 1 if any("error" in r for r in rows) else 0


def _ask(node, args, text: bool) -> dict:
    """One broker's stats (or why there are none), with who it is."""
    from hpbroker.commands.stats import ask_text, broker_stats

    row = {"replica_set": node.replica_set, "broker_id": node.broker_id, "role": node.role, "url": node.url}
    try:
        if text:
            if not node.text:
                raise UserError("no MetaQ text port registered (it runs with --text-port 0)")
            host, _, port = node.text.rpartition(":")
            row["stats"] = ask_text(host, int(port), args.item, args.connect_timeout_ms)
        else:
            row["stats"] = broker_stats(argparse.Namespace(**{**vars(args), "broker": node.url}))
    except UserError as e:
        row["error"] = str(e)
    return row


def totals(stats: list[dict]) -> dict:
    """The additive counters summed over ``stats`` (values as the brokers sent them: ints or decimal strings)."""
    out: dict[str, int] = {}
    for st in stats:
        for k, v in st.items():
            if not ADDITIVE.match(k):
                continue
            try:
                n = int(v)
            except (TypeError, ValueError):
                continue
            out[k] = out.get(k, 0) + n
    return out
