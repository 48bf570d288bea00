"""``hpbroker tx list|commit|rollback``: transactions an operator can see and resolve.

list                 one line per open, prepared or finishing transaction of every acceptor:
                     txid, state, XA or local, age, bytes, messages, partitions
commit TXID          resolve an in-doubt (prepared) transaction by hand, as MetaQ's heuristic
rollback TXID        commit and rollback: the decision is journalled as heuristic and logged

TXID is as ``list`` prints it (``XID:<formatId>:<hex gtrid>:<hex bqual>`` for
an XA branch, ``TX:<session>:<n>`` for a local transaction).
"""

from __future__ import annotations

import json

from hpbroker.commands._broker_args import add_broker_args, user_error

STATES = ["open", "prepared", "committing", "rolling_back"]


def register(sub) -> None:
    p = sub.add_parser("tx", help="list transactions; commit or roll back an in-doubt one by hand")
    s = p.add_subparsers(dest="tx_command", metavar="ACTION")
    s.required = True
    ls = s.add_parser("list", help="open and prepared transactions of every acceptor, with age and size")
    ls.add_argument("--state", action="append", choices=STATES, help="only these states (repeatable)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    add_broker_args(ls, several=False)
    ls.set_defaults(func=_list)
    for action in ("commit", "rollback"):
        a = s.add_parser(action, help=f"{action} an in-doubt transaction by hand (journalled as heuristic)")
        a.add_argument("txid", metavar="TXID")
        add_broker_args(a, several=False)
        a.set_defaults(func=_resolve, action=action)


def _channel(args):
    from hpbroker.client.transaction import TxChannel

    return TxChannel(args.broker, request_timeout_ms=max(args.connect_timeout_ms, 30_000),
                     connect_timeout_ms=args.connect_timeout_ms)


def _list(args) -> int:
    from hpbroker.protocol import messages as m
    from hpbroker.protocol.errors import BrokerError

    ch = _channel(args)
    try:
        replies = ch.on_every_acceptor(lambda i: m.TxList(id=i, states=args.state))
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    finally:
        ch.close()
    txs = sorted((t for r in replies for t in r.transactions), key=lambda t: -t.age_ms)
    if args.json:
        for t in txs:
            print(json.dumps({"txid": t.txid, "state": t.state, "xa": t.xa, "age_ms": t.age_ms, "bytes": t.bytes,
                              "messages": t.messages, "partitions": [f"{a}/{b}" for a, b in t.partitions],
                              "coordinator": t.coordinator}))
        return 0
    print(f"{'TXID':<44} {'STATE':<12} {'KIND':<5} {'AGE':>9} {'BYTES':>10} {'MESSAGES':>9}  PARTITIONS")
    for t in txs:
        parts = ",".join(f"{a}/{b}" for a, b in t.partitions) or "-"
        print(f"{t.txid:<44} {t.state:<12} {'XA' if t.xa else 'local':<5} {_age(t.age_ms):>9} {t.bytes:>10} "
              f"{t.messages:>9}  {parts}")
    return 0


def _age(ms: int) -> str:
    s = ms / 1000
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _resolve(args) -> int:
    from hpbroker.protocol.errors import BrokerError

    ch = _channel(args)
    try:
        rep = ch.end_anywhere(args.txid, args.action, heuristic=True)
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    finally:
        ch.close()
    print(f"{args.txid}: {rep.state.replace('_', ' ')} (heuristic {args.action}, journalled)")
    return 0
