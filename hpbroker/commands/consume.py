"""``hpbroker consume TOPIC``: print one message per line on stdout.

Prints each value (with ``--print-key``: key, separator, value; with
``--headers``: the record's headers first) followed by a newline.  Exits 0
after ``--max-messages`` messages, or once nothing has arrived for
``--timeout-ms``; without either it runs until SIGTERM or Ctrl-C, which
stop it cleanly (exit 0).

``--group G`` consumes as a member of consumer group G (docs/consumer.md):
the group's coordinator gives it its share of the partitions, it starts at
the group's committed offsets (``--from-beginning`` only decides where a
partition with no commit starts), commits what it printed every
``--auto-commit-interval-ms`` and once more on exit, and leaves the group
on exit so its partitions move to the other members at once.  With
``--broadcast`` every instance reads every partition and keeps its own
offsets under ``G-<instance>`` (``--instance``, default the host name).
"""

from __future__ import annotations

import json
import signal
import sys
import time

from hpbroker.commands import UserError
from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error


def register(sub) -> None:
    p = sub.add_parser("consume", help="print the messages of TOPIC, one per line")
    p.add_argument("topic")
    add_broker_args(p)
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the earliest offset (default: only new messages); with --group, only where the "
                        "group has no committed offset")
    p.add_argument("--partition", type=int, metavar="P", help="read only partition P (default: all)")
    p.add_argument("--offset", type=int, metavar="O", help="start at offset O (in --partition, or in every partition)")
    p.add_argument("--max-messages", type=int, metavar="N", help="exit after N messages")
    p.add_argument("--timeout-ms", type=int, metavar="T", help="exit when nothing arrives for T ms")
    p.add_argument("--print-key", action="store_true", help="print KEY SEP VALUE")
    p.add_argument("--key-separator", default="\t", metavar="SEP",
                   help="separator for --print-key and --headers (default: tab)")
    p.add_argument("--headers", action="store_true",
                   help="print each record's headers first: NAME=VALUE,NAME=VALUE SEP ... (NO_HEADERS when none; "
                        "backslash, newline, tab, ',' and '=' escaped with a backslash)")
    g = p.add_argument_group("consumer groups")
    g.add_argument("--group", metavar="G",
                   help="consume as a member of group G: its share of the partitions, from G's committed offsets, "
                        "committing as it goes and on exit")
    g.add_argument("--broadcast", action="store_true",
                   help="with --group: read every partition, offsets kept per instance under G-<instance>")
    g.add_argument("--instance", metavar="NAME",
                   help="this member's instance name (shown by groups describe; names the broadcast offsets); "
                        "default: the host name")
    g.add_argument("--offset-store", choices=["broker", "file"],
                   help="where --group keeps its offsets (default: broker, or ZooKeeper with a zk:// --broker; file with --broadcast)")
    g.add_argument("--offsets-file", metavar="PATH",
                   help="the file of --offset-store file (default ~/.hpbroker/offsets.json)")
    g.add_argument("--auto-commit-interval-ms", type=int, default=5000, metavar="MS",
                   help="with --group: commit what was printed every MS (default %(default)s)")
    g.add_argument("--session-timeout-ms", type=int, default=10_000, metavar="MS",
                   help="with --group: the broker removes this member MS after its last heartbeat (default %(default)s)")
    p.add_argument("--filter", metavar="JSON", help="a server-side filter, e.g. '{\"header\": \"tag\", \"in\": [\"a\", \"b\"]}' "
                                                   "(docs/protocol.md, Filters): only matching messages cross the network")
    p.set_defaults(func=run)


def _check(args) -> None:
    if args.group is None:
        for flag, given in (("--broadcast", args.broadcast), ("--instance", args.instance),
                            ("--offset-store", args.offset_store), ("--offsets-file", args.offsets_file)):
            if given:
                raise UserError(f"{flag} needs --group", 2)
        return
    if args.offset is not None and args.partition is None and not args.broadcast:
        raise UserError("--offset with --group needs --partition: the group's coordinator decides which partitions "
                        "this member reads", 2)
    if args.offsets_file and args.offset_store == "broker":
        raise UserError("--offsets-file is for --offset-store file", 2)
    if args.auto_commit_interval_ms <= 0:
        raise UserError("--auto-commit-interval-ms must be > 0", 2)


def _consumer(args):
    from hpbroker.client.consumer import Consumer

    kw = {}
    if args.filter is not None:
        from hpbroker.protocol.filters import Filter

        try:
            kw["filter"] = Filter(json.loads(args.filter))
        except ValueError as e:  # not JSON, or not a filter (FilterError)
            raise UserError(f"--filter: {e}", 2) from None
    if args.group is not None:
        store = args.offset_store or ("file" if args.offsets_file else None)
        kw.update(group_id=args.group, broadcast=args.broadcast, instance_name=args.instance, offset_store=store,
                  offset_store_path=args.offsets_file, auto_commit_interval_ms=args.auto_commit_interval_ms,
                  session_timeout_ms=args.session_timeout_ms)
    return Consumer(args.broker, args.topic, partitions=None if args.partition is None else [args.partition],
                    auto_offset_reset="earliest" if args.from_beginning else "latest",
                    connect_timeout_ms=args.connect_timeout_ms, **curve_args(args), fetch_max_wait_ms=500, **kw)


def _formatter(args):
    """messages -> the bytes to print for them."""
    from hpbroker.commands._records import BadHeaders, format_headers, header_pairs

    sep = args.key_separator.encode()
    if not args.print_key and not args.headers:
        return lambda msgs: b"\n".join([m.value for m in msgs]) + b"\n"

    def headers(m) -> bytes:
        try:
            return format_headers(header_pairs(m.headers))
        except BadHeaders:  # raw headers bytes only: a Consumer that decodes them raises CorruptBatch in poll
            return b"BAD_HEADERS"

    def line(m) -> bytes:
        head = headers(m) + sep if args.headers else b""
        key = (m.key or b"") + sep if args.print_key else b""
        return head + key + m.value + b"\n"

    return lambda msgs: b"".join([line(m) for m in msgs])


class _Stop:
    """SIGTERM and SIGINT end the loop (the consumer then commits and
    leaves the group); a second one stops waiting for that."""

    def __init__(self):
        self.consumer = None
        self.requested = False
        self._old = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _on_signal(self, signum, frame) -> None:
        if self.requested:  # the second one: give up on a clean exit
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        if self.consumer is not None:
            self.consumer.stop()


def run(args) -> int:
    from hpbroker.batch import CorruptBatch
    from hpbroker.protocol.errors import BrokerError

    _check(args)
    out = sys.stdout.buffer
    render = _formatter(args)
    stop = _Stop()
    stop.install()
    try:
        try:
            c = _consumer(args)
        except BrokerError as e:
            raise user_error(e, args.broker) from None
        stop.consumer = c
        printed = False  # everything polled was written out: the final commit may cover it
        try:
            _loop(args, c, out, render, stop)
            printed = True
        except BrokerError as e:
            printed = True
            raise user_error(e, args.broker) from None
        except CorruptBatch as e:  # e.g. a record whose headers bytes do not decode: the client cannot hand it out
            # no final commit: Fetcher.take_messages sets each partition's position as it goes, so a poll that
            # raised may have moved other partitions past messages it never returned; the last auto-commit stands
            raise UserError(f"{args.topic}: a record the client cannot decode stops the read: {e}", 1) from None
        finally:
            # with --group: the final commit (not after a failed write: those messages were not printed),
            # then leave the group, so its partitions move to the other members at once
            c.close(autocommit=printed)
    finally:
        stop.restore()
    return 0


def _loop(args, c, out, render, stop: _Stop) -> None:
    if args.offset is not None:
        for p in c.assignment():
            c.seek(p, args.offset)
    else:
        for p in c.assignment():
            c.position(p)  # fix the start now, not at the first poll (a group member is assigned later)
    left = args.max_messages
    last = time.monotonic()
    while (left is None or left > 0) and not stop.requested:
        wait = 500 if args.timeout_ms is None else max(0, min(500, args.timeout_ms - (time.monotonic() - last) * 1000))
        msgs = c.poll(timeout_ms=wait, max_records=10_000 if left is None else min(left, 10_000))
        if msgs:
            out.write(render(msgs))
            out.flush()
            last = time.monotonic()
            if left is not None:
                left -= len(msgs)
        elif args.timeout_ms is not None and (time.monotonic() - last) * 1000 >= args.timeout_ms:
            break
