"""``hpbroker layout``: the CPU and NUMA plan the broker would use here."""

from __future__ import annotations

from hpbroker import config
from hpbroker.broker import layout
from hpbroker.commands import UserError


def register(sub) -> None:
    p = sub.add_parser("layout", help="print the process, core and ring placement plan for this machine")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--acceptors", type=int)
    p.add_argument("--writers", type=int)
    p.add_argument("--cpu-affinity", choices=["auto", "off"], default="auto",
                   help="plan with pinning (default auto, to show where each process would go)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        cfg = config.load(args.config, broker__acceptors=args.acceptors, broker__writers=args.writers,
                          broker__cpu_affinity=args.cpu_affinity)
    except config.ConfigError as e:
        raise UserError(str(e)) from None
    print(layout.render(layout.plan(cfg.broker), cfg.instance))
    return 0
