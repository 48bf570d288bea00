"""``hpbroker produce TOPIC``: one message per stdin line.

Binary-safe: stdin is read as bytes and only the ``\\n`` ending a line is
removed.  Lines are accumulated and sent with ``Producer.send_batch`` in
chunks; the command exits 0 only after every message is acknowledged, and
prints a one-line summary to stderr.  ``--header NAME=VALUE`` (repeatable)
gives every message the same record headers, in the order given.
"""

from __future__ import annotations

import sys
import time

from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error

CHUNK_BYTES = 1 << 20
READ_BYTES = 4 << 20


def register(sub) -> None:
    p = sub.add_parser("produce", help="send each stdin line to TOPIC as one message")
    p.add_argument("topic")
    add_broker_args(p)
    p.add_argument("--key-separator", metavar="SEP", help="split each line at the first SEP into key and value")
    p.add_argument("--partition", type=int, metavar="P", help="send every message to partition P (default: by key, else round robin)")
    p.add_argument("--acks", choices=["0", "1", "all"], default="1", help="0: don't wait, 1: local durable commit, all: replicas too (default %(default)s)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="add record header NAME with VALUE (as bytes) to every message; repeatable, order kept")
    p.set_defaults(func=run)


def parse_headers(flags: list[str]) -> list[tuple[str, bytes]]:
    """``--header NAME=VALUE`` flags as (name, value bytes) pairs; the value
    is everything after the first ``=`` (it may be empty or hold ``=``),
    taken as the bytes the shell passed.  A malformed flag is a one-line
    UserError (exit 2)."""
    import os

    from hpbroker import batch
    from hpbroker.commands import UserError

    pairs = []
    for flag in flags:
        name, eq, value = flag.partition("=")
        if not eq:
            raise UserError(f"--header {flag!r}: expected NAME=VALUE", 2)
        if not name:
            raise UserError(f"--header {flag!r}: the header name is empty", 2)
        pairs.append((name, os.fsencode(value)))
    try:
        batch.encode_headers(pairs)
    except (TypeError, ValueError) as e:
        raise UserError(f"--header: {e}", 2) from None
    return pairs


def _lines(stream):
    """Yield lists of lines (bytes, newline stripped), about CHUNK_BYTES each."""
    tail = b""
    while True:
        block = stream.read(READ_BYTES)
        if not block:
            break
        block = tail + block
        cut = block.rfind(b"\n")
        if cut < 0:
            tail = block
            continue
        tail = block[cut + 1 :]
        lines = block[:cut].split(b"\n")
        for i in range(0, len(lines), 65536):
            yield lines[i : i + 65536]
    if tail:
        yield [tail]


def run(args) -> int:
    from hpbroker.client.producer import Producer
    from hpbroker.protocol.errors import BrokerError

    sep = args.key_separator.encode() if args.key_separator else None
    headers = parse_headers(args.header) or None
    acks = {"0": 0, "1": 1, "all": "all"}[args.acks]
    t0 = time.perf_counter()
    count = nbytes = 0
    futures = []
    p = Producer(args.broker, acks=acks, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args), max_block_ms=max(args.connect_timeout_ms, 60_000))
    try:
        try:
            nparts = len(p.partitions_for(args.topic))
        except BrokerError as e:
            raise user_error(e, args.broker) from None
        rr = 0
        for lines in _lines(sys.stdin.buffer):
            count += len(lines)
            nbytes += sum(map(len, lines))
            if sep is None:
                part = args.partition if args.partition is not None else rr % nparts
                rr += 1
                futures.append(p.send_batch(args.topic, lines, partition=part,
                                            headers=None if headers is None else [headers] * len(lines)))
                continue
            groups: dict[int, tuple[list, list]] = {}
            from hpbroker.partitioning import partition_for_key

            for line in lines:
                k, found, v = line.partition(sep)
                key, value = (k, v) if found else (None, line)
                part = args.partition if args.partition is not None else (partition_for_key(key, nparts) if key is not None else rr % nparts)
                if key is None:
                    rr += 1
                g = groups.setdefault(part, ([], []))
                g[0].append(key)
                g[1].append(value)
            for part, (keys, values) in groups.items():
                futures.append(p.send_batch(args.topic, values, partition=part, keys=keys,
                                            headers=None if headers is None else [headers] * len(values)))
        p.flush()
    finally:
        p.close()
    failed = [f.exception() for f in futures if f.exception() is not None]
    secs = time.perf_counter() - t0
    rate = count / secs if secs > 0 else 0.0
    print(f"produced {count} messages, {nbytes} bytes in {secs:.2f} s ({rate:,.0f} msg/s, {nbytes / secs / 1e6 if secs else 0:.1f} MB/s)"
          + (f"; {len(failed)} of {len(futures)} batches FAILED: {failed[0]}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0
