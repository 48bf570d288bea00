"""``hpbroker topics create|list|describe``: topic administration.

create NAME --partitions N   create a topic (error if it exists, unless --if-not-exists)
list                         one line per topic: name and partition count
describe NAME                one line per partition: leader, epoch, earliest and latest offsets

With ``--zookeeper HOST:PORT[,HOST:PORT...][/chroot]`` they act on a
cluster (docs/cluster.md): ``create`` spreads N partitions over the masters
of ``--brokers 1,2`` (replica sets; default every set with a master),
``list`` and ``describe`` read the global partition list from ZooKeeper
(``describe``: one line per global partition with its set, leader and
replicas).
"""

from __future__ import annotations

import os

from hpbroker.commands import UserError
from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error


def register(sub) -> None:
    p = sub.add_parser("topics", help="create, list and describe topics")
    s = p.add_subparsers(dest="topics_command", metavar="ACTION")
    s.required = True
    c = s.add_parser("create", help="create a topic")
    c.add_argument("name")
    c.add_argument("--partitions", type=int, required=True, metavar="N",
                   help="partitions (with --zookeeper: in all, spread over the replica sets)")
    c.add_argument("--if-not-exists", action="store_true", help="succeed if the topic already exists")
    c.add_argument("--brokers", metavar="SET,SET", default=None,
                   help="with --zookeeper: the replica sets (MetaQ broker ids) whose masters hold the topic "
                        "(default: every set with a master)")
    _cluster_args(c)
    add_broker_args(c)
    c.set_defaults(func=_create)
    ls = s.add_parser("list", help="list topics")
    _cluster_args(ls)
    add_broker_args(ls)
    ls.set_defaults(func=_list)
    d = s.add_parser("describe", help="partitions of a topic with leaders and offsets")
    d.add_argument("name")
    _cluster_args(d)
    add_broker_args(d)
    d.set_defaults(func=_describe)


def _cluster_args(p) -> None:
    p.add_argument("--zookeeper", metavar="HOST:PORT[,HOST:PORT...][/chroot]",
                   default=os.environ.get("HPBROKER_ZOOKEEPER"),
                   help="a cluster's ZooKeeper (default $HPBROKER_ZOOKEEPER): brokers are found there, "
                        "and --broker is not used")


def _zk_url(args) -> str | None:
    if not args.zookeeper and args.broker.strip().startswith("zk://"):
        args.zookeeper = args.broker  # --broker zk://... says the same
    if not args.zookeeper:
        return None
    from hpbroker.cluster.client_view import parse_zk_url

    z = args.zookeeper.strip()
    url = z if z.startswith("zk://") else "zk://" + z
    try:
        parse_zk_url(url)
    except ValueError as e:
        raise UserError(f"--zookeeper: {e}", 2) from None
    return url


def _admin(args):
    from hpbroker.client.admin import Admin

    return Admin(_zk_url(args) or args.broker, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args))


def _call(args, fn):
    from hpbroker.protocol.errors import BrokerError

    a = None
    try:
        a = _admin(args)  # with --zookeeper this reads ZooKeeper, and may fail too
        return fn(a)
    except BrokerError as e:
        raise user_error(e, args.zookeeper or args.broker) from None
    finally:
        if a is not None:
            a.close()


def _create(args) -> int:
    if _zk_url(args):
        sets = None
        if args.brokers:
            try:
                sets = [int(x) for x in args.brokers.split(",") if x.strip()]
            except ValueError:
                raise UserError(f"--brokers: a comma list of replica set numbers, got {args.brokers!r}", 2) from None
        try:
            per = _call(args, lambda a: a.create_topic(args.name, args.partitions, brokers=sets,
                                                       if_not_exists=args.if_not_exists))
        except ValueError as e:
            raise UserError(str(e), 2) from None
        spread = ", ".join(f"set {rs}: {n}" for rs, n in sorted(per.items()))
        print(f"{args.name}: {sum(per.values())} partitions ({spread})")
        return 0
    if args.brokers:
        raise UserError("--brokers needs --zookeeper (replica sets are found there)", 2)
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
    if _zk_url(args):
        print("partition\tset\tset-partition\tleader\treplicas\tearliest\tlatest")
        for r in rows:
            print(f"{r.partition}\t{r.replica_set}\t{r.replica_set}-{r.local}\t"
                  f"{'-' if r.leader is None else r.leader}\t{','.join(map(str, r.replicas)) or '-'}\t"
                  f"{'-' if r.earliest is None else r.earliest}\t{'-' if r.latest is None else r.latest}")
        return 0
    print("partition\tleader\tepoch\tearliest\tlatest")
    for r in rows:
        print(f"{r.partition}\t{r.leader}\t{r.leader_epoch}\t{r.earliest}\t{r.latest}")
    return 0
