"""``hpbroker stats``: the broker's counters, one ``STAT name value`` line each
(the memcached-style output MetaQ's ``stats`` command had).

``hpbroker stats`` asks the broker (ZeroMQ ``Stats``); ``hpbroker stats
ITEM`` (or ``--text``) asks its text listener for one of MetaQ's stats
items, as a memcached tool would (docs/protocol-text.md, "stats"):
``topics``, ``offsets``, ``realtime``, ``groups``, ``config``, a topic's
name, or ``""`` for the general one (MetaQ's counters, the text listener's,
ring occupancy and the broker's own).

With ``--broker zk://HOST:PORT[/chroot]`` it asks every broker registered in
that cluster's ZooKeeper (:mod:`._stats_cluster`): one block per broker, then
the cluster's totals.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error
from hpbroker.commands import UserError

TEXT_PORT_OFFSET = 523  # as text_protocol.port = "auto" (hpbroker/config.py)


def register(sub) -> None:
    p = sub.add_parser("stats", help="print a running broker's counters (role, replication lag, MetaQ's stats items, ...)")
    p.add_argument("item", nargs="?", default=None,
                   help="one of MetaQ's stats items, asked of the text listener: topics, offsets, realtime, groups, "
                        "config, help, a topic name; omit it for the broker's own counters")
    add_broker_args(p, several=False, cluster=True)
    p.add_argument("--text", action="store_true", help="the text listener's general item (MetaQ's counters and more)")
    p.add_argument("--text-port", type=int, metavar="N",
                   help="the text listener's port (default: the broker's port + 523, as text_protocol.port = auto)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of STAT lines")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.broker.strip().startswith("zk://"):
        from hpbroker.commands._stats_cluster import run_cluster

        return run_cluster(args)
    if args.item is not None or args.text or args.text_port:
        stats = text_stats(args)
    else:
        stats = broker_stats(args)
    if args.json:
        print(json.dumps(stats, sort_keys=args.item is None))
    else:
        for k, v in (sorted(stats.items()) if args.item is None and not args.text else stats.items()):
            print(f"STAT {k} {v}")
        print("END")
    return 0


def broker_stats(args) -> dict:
    from hpbroker.client.request import request
    from hpbroker.protocol import messages as m
    from hpbroker.protocol.errors import BrokerError

    try:
        rep = request(args.broker, lambda i: m.Stats(id=i), args.connect_timeout_ms, **curve_args(args))
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    return rep.stats


def text_stats(args) -> dict:
    """``stats ITEM`` over the text port, in memcached's format: {name: value}."""
    try:
        u = urlsplit(args.broker)
        host, port = u.hostname or "127.0.0.1", u.port
    except ValueError:
        host, port = None, None
    if host is None or port is None:
        raise UserError(f"--broker: not tcp://HOST:PORT: {args.broker}", 2)
    return ask_text(host, args.text_port or port + TEXT_PORT_OFFSET, args.item, args.connect_timeout_ms)


def ask_text(host: str, tport: int, item: str | None, timeout_ms: int) -> dict:
    """``stats ITEM`` asked of the text listener at host:tport: {name: value}, or UserError (one line)."""
    item = (item or "").strip()
    if any(c.isspace() for c in item):
        raise UserError(f"a stats item has no spaces: {item!r}", 2)
    timeout = timeout_ms / 1000
    try:
        with socket.create_connection((host, tport), timeout=timeout) as s:
            s.sendall(b"stats %s\r\n" % item.encode() if item else b"stats\r\n")
            data = b""
            while not (data.endswith(b"END\r\n") or data.endswith(b"RESET\r\n")):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        raise UserError(f"no answer from the text listener at {host}:{tport} ({e.strerror or e}); is the broker running "
                        "with a text port? (--text-port)", 1) from None
    out = {}
    for line in data.decode("utf-8", "replace").split("\r\n"):
        if line.startswith("STAT "):
            _, name, value = (line.split(" ", 2) + [""])[:3]
            out[name] = value
        elif line and line not in ("END", "RESET"):
            raise UserError(f"the text listener at {host}:{tport} answered: {line}", 1)
    return out
