"""``hpbroker topics create|list|describe``: topic administration.

create NAME --partitions N   create a topic (error if it exists, unless --if-not-exists)
list                         one line per topic: name and partition count
describe NAME                one line per partition: leader, epoch, earliest and latest offsets
"""

from __future__ import annotations

from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error


def register(sub) -> None:
    p = sub.add_parser("topics", help="create, list and describe topics")
    s = p.add_subparsers(dest="topics_command", metavar="ACTION")
    s.required = True
    c = s.add_parser("create", help="create a topic")
    c.add_argument("name")
    c.add_argument("--partitions", type=int, required=True, metavar="N")
    c.add_argument("--if-not-exists", action="store_true", help="succeed if the topic already exists")
    add_broker_args(c)
    c.set_defaults(func=_create)
    ls = s.add_parser("list", help="list topics")
    add_broker_args(ls)
    ls.set_defaults(func=_list)
    d = s.add_parser("describe", help="partitions of a topic with leaders and offsets")
    d.add_argument("name")
    add_broker_args(d)
    d.set_defaults(func=_describe)


def _admin(args):
    from hpbroker.client.admin import Admin

    return Admin(args.broker, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args))


def _call(args, fn):
    from hpbroker.protocol.errors import BrokerError

    a = _admin(args)
    try:
        return fn(a)
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    finally:
        a.close()


def _create(args) -> int:
    n = _call(args, lambda a: a.create_topic(args.name, args.partitions, if_not_exists=args.if_not_exists))
    print(f"{args.name}: {n} partitions")
    return 0


def _list(args) -> int:
    for name, n in sorted(_call(args, lambda a: a.list_topics()).items()):
        print(f"{name}\t{n}")
    return 0


def _describe(args) -> int:
    rows = _call(args, lambda a: a.describe(args.name))
    print(f"topic {args.name}: {len(rows)} partitions")
    print("partition\tleader\tepoch\tearliest\tlatest")
    for r in rows:
        print(f"{r.partition}\t{r.leader}\t{r.leader_epoch}\t{r.earliest}\t{r.latest}")
    return 0
