"""``hpbroker acl check FILE``, ``hpbroker acl push FILE --zookeeper HOSTS``,
``hpbroker acl show --zookeeper HOSTS``: the cluster's ACL.

``check`` parses an ACL file as a broker would (no broker or ZooKeeper
needed).  ``push`` checks it, then makes it the ACL of every broker with
``security.acl_source = "zookeeper"`` (hpbroker/cluster/acl_store.py);
they take it within ``security.reload_ms`` of seeing it.  ``show`` prints
the ACL in ZooKeeper and its version.
"""

from __future__ import annotations

import sys

from hpbroker.commands import UserError
from hpbroker.commands._zk import add_zookeeper_args, close, connect


def register(sub) -> None:
    p = sub.add_parser("acl", help="check an ACL file, or push it to / show it from ZooKeeper (docs/security.md)")
    s = p.add_subparsers(dest="acl_command", metavar="ACTION")
    s.required = True
    c = s.add_parser("check", help="parse an ACL file as a broker would")
    c.add_argument("file", metavar="FILE")
    c.set_defaults(func=_check)
    for name, helptext, fn in (("push", "check FILE and make it the cluster's ACL in ZooKeeper", _push),
                               ("show", "print the cluster's ACL in ZooKeeper and its version", _show)):
        q = s.add_parser(name, help=helptext)
        if name == "push":
            q.add_argument("file", metavar="FILE")
        add_zookeeper_args(q)
        q.set_defaults(func=fn)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None


def _parse(path: str):
    from hpbroker.security.acl import Acl, AclError

    text = _read(path)
    try:
        return text, Acl.parse(text, path)
    except AclError as e:
        raise UserError(str(e)) from None


def _check(args) -> int:
    _, acl = _parse(args.file)
    print(f"{args.file}: {len(acl.rules)} rules")
    return 0


def _push(args) -> int:
    from hpbroker.cluster.acl_store import push_acl

    text, acl = _parse(args.file)
    zk = connect(args.zookeeper, args.timeout)
    try:
        version = push_acl(zk, text, args.file)
    finally:
        close(zk)
    print(f"pushed {args.file} ({len(acl.rules)} rules) as version {version}")
    return 0


def _show(args) -> int:
    from hpbroker.cluster import paths
    from hpbroker.cluster.acl_store import read_acl

    zk = connect(args.zookeeper, args.timeout)
    try:
        got = read_acl(zk)
    finally:
        close(zk)
    if got is None:
        raise UserError(f"no ACL in ZooKeeper at {paths.ACL}: push one with hpbroker acl push FILE --zookeeper ...")
    text, version = got
    print(f"# {paths.ACL}, version {version}")
    sys.stdout.write(text.decode("utf-8", "replace"))
    return 0
