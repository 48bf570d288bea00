"""``hpbroker consume TOPIC``: print one message per line on stdout.

Prints each value (with ``--print-key``: key, separator, value) followed by
a newline.  Exits 0 after ``--max-messages`` messages, or once nothing has
arrived for ``--timeout-ms``; without either it runs until interrupted.
"""

from __future__ import annotations

import json
import sys
import time

from hpbroker.commands import UserError
from hpbroker.commands._broker_args import add_broker_args, user_error


def register(sub) -> None:
    p = sub.add_parser("consume", help="print the messages of TOPIC, one per line")
    p.add_argument("topic")
    add_broker_args(p)
    p.add_argument("--from-beginning", action="store_true", help="start at the earliest offset (default: only new messages)")
    p.add_argument("--partition", type=int, metavar="P", help="read only partition P (default: all)")
    p.add_argument("--offset", type=int, metavar="O", help="start at offset O (in --partition, or in every partition)")
    p.add_argument("--max-messages", type=int, metavar="N", help="exit after N messages")
    p.add_argument("--timeout-ms", type=int, metavar="T", help="exit when nothing arrives for T ms")
    p.add_argument("--print-key", action="store_true", help="print KEY SEP VALUE")
    p.add_argument("--key-separator", default="\t", metavar="SEP", help="separator for --print-key (default: tab)")
    p.add_argument("--filter", metavar="JSON", help="a server-side filter, e.g. '{\"header\": \"tag\", \"in\": [\"a\", \"b\"]}' "
                                                   "(docs/protocol.md, Filters): only matching messages cross the network")
    p.set_defaults(func=run)


def run(args) -> int:
    from hpbroker.client.consumer import Consumer
    from hpbroker.protocol.errors import BrokerError

    out = sys.stdout.buffer
    sep = args.key_separator.encode()
    flt = None
    if args.filter is not None:
        from hpbroker.protocol.filters import Filter

        try:
            flt = Filter(json.loads(args.filter))
        except ValueError as e:  # not JSON, or not a filter (FilterError)
            raise UserError(f"--filter: {e}", 2) from None
    try:
        c = Consumer(args.broker, args.topic, partitions=None if args.partition is None else [args.partition],
                     auto_offset_reset="earliest" if args.from_beginning else "latest",
                     connect_timeout_ms=args.connect_timeout_ms, fetch_max_wait_ms=500, filter=flt)
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    try:
        if args.offset is not None:
            for p in c.assignment():
                c.seek(p, args.offset)
        else:
            for p in c.assignment():
                c.position(p)  # fix the start now, not at the first poll
        left = args.max_messages
        last = time.monotonic()
        while left is None or left > 0:
            wait = 500 if args.timeout_ms is None else max(0, min(500, args.timeout_ms - (time.monotonic() - last) * 1000))
            try:
                msgs = c.poll(timeout_ms=wait, max_records=10_000 if left is None else min(left, 10_000))
            except BrokerError as e:
                raise user_error(e, args.broker) from None
            if msgs:
                if args.print_key:
                    out.write(b"".join([(m.key or b"") + sep + m.value + b"\n" for m in msgs]))
                else:
                    out.write(b"\n".join([m.value for m in msgs]) + b"\n")
                out.flush()
                last = time.monotonic()
                if left is not None:
                    left -= len(msgs)
            elif args.timeout_ms is not None and (time.monotonic() - last) * 1000 >= args.timeout_ms:
                break
    finally:
        c.close()
    return 0
