"""``hpbroker stats``: the broker's counters, one ``STAT name value`` line each
(the memcached-style output MetaQ's ``stats`` command had)."""

from __future__ import annotations

import json

from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error


def register(sub) -> None:
    p = sub.add_parser("stats", help="print a running broker's counters (role, replication lag, ...)")
    add_broker_args(p, several=False)
    p.add_argument("--json", action="store_true", help="one JSON object instead of STAT lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from hpbroker.client.request import request
    from hpbroker.protocol import messages as m
    from hpbroker.protocol.errors import BrokerError

    try:
        rep = request(args.broker, lambda i: m.Stats(id=i), args.connect_timeout_ms, **curve_args(args))
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    if args.json:
        print(json.dumps(rep.stats, sort_keys=True))
    else:
        for k in sorted(rep.stats):
            print(f"STAT {k} {rep.stats[k]}")
        print("END")
    return 0
