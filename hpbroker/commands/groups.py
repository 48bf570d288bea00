"""``hpbroker groups list|describe|reset-offsets``: consumer group administration.

list                  one line per group of every acceptor: name, state, members
describe G            the group's members (id, host, instance, epoch, assigned partitions), then per
                      partition: committed offset, high watermark, lag, owner
reset-offsets G       move G's committed offsets --to-earliest, --to-latest, --to-datetime or --shift N,
                      in every partition of --topic T (repeatable; default: the topics G has commits for);
                      refused while G has live members; --dry-run prints without committing

A group that does not exist (no members, no committed offsets) is one line
on stderr and exit 1.
"""

from __future__ import annotations

from datetime import datetime

from hpbroker.commands import UserError
from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error


def register(sub) -> None:
    p = sub.add_parser("groups", help="list, describe and reset the offsets of consumer groups")
    s = p.add_subparsers(dest="groups_command", metavar="ACTION")
    s.required = True
    ls = s.add_parser("list", help="every group of every acceptor: state and member count")
    add_broker_args(ls)
    ls.set_defaults(func=_list)
    d = s.add_parser("describe", help="members, assignment, committed offsets and lag of a group")
    d.add_argument("group")
    add_broker_args(d)
    d.set_defaults(func=_describe)
    r = s.add_parser("reset-offsets", help="move a group's committed offsets (only while it has no live members)")
    r.add_argument("group")
    to = r.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the log start of each partition")
    to.add_argument("--to-latest", action="store_true", help="the high watermark of each partition (skip everything)")
    to.add_argument("--to-datetime", metavar="ISO8601",
                    help="the first offset written at or after this time, e.g. 2024-05-01T12:00:00Z (no UTC offset: "
                         "local time); the high watermark where nothing is that recent")
    to.add_argument("--shift", type=int, metavar="N",
                    help="N more (or, negative, fewer) than the committed offset (the log start where none), kept "
                         "within [log start, high watermark]")
    r.add_argument("--topic", action="append", metavar="T",
                   help="reset every partition of T (repeatable; default: every topic the group has commits for)")
    r.add_argument("--dry-run", action="store_true", help="print what would change, commit nothing")
    add_broker_args(r)
    r.set_defaults(func=_reset)


def _call(args, fn):
    from hpbroker.client.admin import Admin
    from hpbroker.protocol.errors import BrokerError

    a = Admin(args.broker, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args))
    try:
        return fn(a)
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    finally:
        a.close()


def _list(args) -> int:
    groups = _call(args, lambda a: a.list_groups())
    print("group\tstate\tmembers")
    for g in groups:
        print(f"{g.group}\t{g.state}\t{g.members}")
    return 0


def _partitions(tps) -> str:
    """[("t", 0), ("t", 1), ("u", 3)] -> "t:0,1 u:3"."""
    by: dict[str, list[int]] = {}
    for t, p in tps:
        by.setdefault(t, []).append(p)
    return " ".join(f"{t}:{','.join(map(str, sorted(ps)))}" for t, ps in sorted(by.items())) or "-"


def _dash(v) -> str:
    return "-" if v is None or v == "" else str(v)


def _describe(args) -> int:
    d = _call(args, lambda a: a.describe_group(args.group))
    print(f"group {d.group}: {d.state}, epoch {d.group_epoch}, assignor {_dash(d.assignor)}, "
          f"{len(d.members)} member{'' if len(d.members) == 1 else 's'}, lag {d.lag}")
    print()
    print("member\thost\tinstance\tepoch\tassigned")
    for mem in d.members:
        revoking = f" (revoking {_partitions(mem.revoking)})" if mem.revoking else ""
        print(f"{mem.member_id}\t{_dash(mem.client_host)}\t{_dash(mem.instance_id)}\t{mem.member_epoch}\t"
              f"{_partitions(mem.assignment)}{revoking}")
    print()
    print("topic\tpartition\tcommitted\thigh-watermark\tlag\towner")
    for p in d.partitions:
        print(f"{p.topic}\t{p.partition}\t{_dash(p.committed)}\t{p.high_watermark}\t{p.lag}\t{_dash(p.owner)}")
    return 0


def parse_datetime(text: str) -> int:
    """ISO 8601 -> ms since the epoch (local time when no UTC offset is given)."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--to-datetime {text!r}: not an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z)", 2) from None
    ms = int(dt.timestamp() * 1000)  # a naive dt is taken as local time
    if ms < 0:
        raise UserError(f"--to-datetime {text!r}: before 1970", 2)
    return ms


def _spec(args):
    if args.to_earliest:
        return "to-earliest", "to the earliest offsets"
    if args.to_latest:
        return "to-latest", "to the latest offsets"
    if args.to_datetime is not None:
        return ("to-datetime", parse_datetime(args.to_datetime)), f"to {args.to_datetime}"
    return ("shift", args.shift), f"shifted by {args.shift:+d}"


def _reset(args) -> int:
    spec, how = _spec(args)
    rows = _call(args, lambda a: a.reset_offsets(args.group, spec, topics=args.topic, dry_run=args.dry_run))
    print("topic\tpartition\told -> new")
    for r in rows:
        print(f"{r.topic}\t{r.partition}\t{_dash(r.old)} -> {r.new}")
    changed = sum(1 for r in rows if r.old != r.new)
    n = len(rows)
    if args.dry_run:
        print(f"dry run: group {args.group} would be reset {how} in {n} partitions ({changed} changed); nothing committed")
    else:
        print(f"group {args.group}: reset {how} in {n} partitions ({changed} changed)")
    return 0
