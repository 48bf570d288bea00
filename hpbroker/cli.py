"""``hpbroker``: one command line, one subcommand per job.

Each subcommand group lives in ``hpbroker/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func``.  A
command's function returns the exit code.  Errors a user can fix are raised
as :class:`hpbroker.commands.UserError` and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import hpbroker.commands

from hpbroker.commands import UserError



def command_modules() -> list[str]:
    """Every subcommand module (a leading underscore marks a shared helper, not a command)."""
    return sorted(m.name for m in pkgutil.iter_modules(hpbroker.commands.__path__) if not m.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpbroker", description="High-throughput durable message broker.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_modules():
        importlib.import_module(f"hpbroker.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "broker_several", None) is not None:
            from hpbroker.commands._broker_args import check_broker_arg

            check_broker_arg(args)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"hpbroker {args.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
