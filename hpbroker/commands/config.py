"""``hpbroker config docs|show|check``: the configuration, documented and checked."""

from __future__ import annotations

import sys

import msgspec

from hpbroker import config
from hpbroker.commands import UserError


def register(sub) -> None:
    p = sub.add_parser("config", help="print the documented config keys, or check a config file")
    s = p.add_subparsers(dest="config_command", metavar="ACTION")
    s.required = True
    d = s.add_parser("docs", help="print docs/config.md (every key with its default)")
    d.set_defaults(func=_docs)
    sh = s.add_parser("show", help="print the effective config as TOML")
    sh.add_argument("--config", help="TOML file to load")
    sh.set_defaults(func=_show)
    c = s.add_parser("check", help="exit 0 if the file is a valid config, else print why and exit 2")
    c.add_argument("path")
    c.set_defaults(func=_check)


def _load(path):
    try:
        return config.load(path)
    except config.ConfigError as e:
        raise UserError(str(e)) from None


def _docs(args) -> int:
    sys.stdout.write(config.render_docs())
    return 0


def _show(args) -> int:
    sys.stdout.write(msgspec.toml.encode(_load(args.config)).decode())
    return 0


def _check(args) -> int:
    _load(args.path)
    print(f"{args.path}: ok")
    return 0
