"""``hpbroker promote --broker URL``: make a slave the master, with a new leader epoch.

Run it after the old master is gone: while the slave's master still answers
as a master (within replication.promote_probe_ms), the promotion is refused,
since both would take produce requests; ``--force`` skips that check.
Producers and consumers then use the promoted broker (its metadata names it
as leader); the old master may rejoin later as a slave of it, and
truncates its divergent tail by epoch.
"""

from __future__ import annotations

from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error


def register(sub) -> None:
    p = sub.add_parser("promote", help="turn a slave into the master (new leader epoch)")
    add_broker_args(p, several=False)
    p.add_argument("--force", action="store_true",
                   help="promote even though the slave's master still answers as a master (two masters)")
    p.set_defaults(func=run)


def run(args) -> int:
    from hpbroker.client.request import request
    from hpbroker.protocol import messages as m
    from hpbroker.protocol.errors import BrokerError

    try:
        rep = request(args.broker, lambda i: m.Promote(id=i, force=args.force), 60_000,
                      connect_timeout_ms=args.connect_timeout_ms, **curve_args(args))
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    print(f"{args.broker} is now the master, leader epoch {rep.leader_epoch}")
    return 0
