"""``hpbroker cluster config push FILE`` and ``hpbroker cluster config show``:
the settings a cluster's brokers share, in ZooKeeper
(hpbroker/cluster/shared_config.py; docs/cluster.md, "Shared settings")."""

from __future__ import annotations

import sys

from hpbroker.commands import UserError
from hpbroker.commands._zk import add_zookeeper_args, close, connect


def register(csub) -> None:
    c = csub.add_parser("config", help="the settings shared by the cluster's brokers, in ZooKeeper")
    s = c.add_subparsers(dest="config_command", metavar="ACTION")
    s.required = True
    for name, helptext, fn in (("push", "check FILE (TOML, broker config form) and make it the shared settings", _push),
                               ("show", "print the shared settings and their version", _show)):
        q = s.add_parser(name, help=helptext)
        if name == "push":
            q.add_argument("file", metavar="FILE")
        add_zookeeper_args(q)
        q.set_defaults(func=fn)


def _push(args) -> int:
    from hpbroker.cluster import shared_config

    try:
        with open(args.file, "rb") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"{args.file}: {e.strerror}") from None
    try:
        shared_config.check(text, args.file)
    except shared_config.SharedConfigError as e:
        raise UserError(str(e)) from None
    zk = connect(args.zookeeper, args.timeout)
    try:
        version = shared_config.push(zk, text, args.file)
    finally:
        close(zk)
    print(f"pushed {args.file} as shared settings version {version}; brokers apply it when they next start "
          "(hpbroker cluster status shows which run an older one)")
    return 0


def _show(args) -> int:
    from hpbroker.cluster import paths, shared_config

    zk = connect(args.zookeeper, args.timeout)
    try:
        got = shared_config.read(zk)
    finally:
        close(zk)
    if got is None:
        raise UserError(f"no shared settings in ZooKeeper at {paths.SHARED_CONFIG}: "
                        "push some with hpbroker cluster config push FILE --zookeeper ...")
    print(f"# {paths.SHARED_CONFIG}, version {got[0].version}")
    sys.stdout.write(got[0].toml if got[0].toml.endswith("\n") else got[0].toml + "\n")
    return 0
