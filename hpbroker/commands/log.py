"""``hpbroker log dump|verify DIR``: look inside segment files.

``dump`` lists every batch: segment file, byte position, base and last
offset, record count, timestamps and CRC status.  ``verify`` checks every
batch (CRC32C, layout, offset continuity) and exits 0 when all are intact,
else prints each bad batch with its file and position and exits 1.  DIR is a
partition directory (``<topic>-<partition>``) or a data directory (all its
partitions).  Both only read; they are safe next to a running broker.
"""

from __future__ import annotations

import os
import sys

from hpbroker.commands import UserError
from hpbroker.io.inspect import inspect_partition, partition_dirs


def register(sub) -> None:
    p = sub.add_parser("log", help="dump or verify the batches of a partition or data directory")
    s = p.add_subparsers(dest="log_command", metavar="ACTION")
    s.required = True
    d = s.add_parser("dump", help="list every batch (segment, position, offsets, timestamps, CRC status)")
    d.add_argument("dir", help="partition directory or data directory")
    d.set_defaults(func=_dump)
    v = s.add_parser("verify", help="exit 0 if every batch is intact, else name each bad one and exit 1")
    v.add_argument("dir", help="partition directory or data directory")
    v.add_argument("--compare", metavar="DIR2",
                   help="also check that DIR2 (another replica's data or partition directory) holds byte-identical "
                        "batches up to the shorter log's end")
    v.add_argument("--upto", type=int, metavar="OFFSET", help="with --compare: both logs must reach OFFSET and match below it")
    v.set_defaults(func=_verify)


def _dirs(path: str) -> list[str]:
    if not os.path.isdir(path):
        raise UserError(f"{path} is not a directory")
    dirs = partition_dirs(path)
    if not dirs:
        raise UserError(f"{path} holds no partition (no NNNN.log segments, no <topic>-<partition> directories)")
    return dirs


def _dump(args) -> int:
    out = sys.stdout
    out.write("segment\tposition\tbase_offset\tlast_offset\tcount\tfirst_timestamp\tmax_timestamp\tlength\tcrc\n")
    bad = 0
    for d in _dirs(args.dir):
        for it in inspect_partition(d):
            name = os.path.relpath(it.path, args.dir)
            h = it.header
            if h is None:
                bad += 1
                out.write(f"{name}\t{it.pos}\t-\t-\t-\t-\t-\t-\tBAD: {it.problem}\n")
            else:
                out.write(f"{name}\t{it.pos}\t{h.base_offset}\t{h.last_offset}\t{h.record_count}\t"
                          f"{h.first_timestamp}\t{h.max_timestamp}\t{h.batch_length}\tok\n")
    return 1 if bad else 0


def _verify(args) -> int:
    batches = bad = 0
    for d in _dirs(args.dir):
        for it in inspect_partition(d):
            if it.header is None:
                bad += 1
                print(f"BAD {it.path} position {it.pos}: {it.problem}")
            else:
                batches += 1
    print(f"{batches} batches intact, {bad} bad", file=sys.stderr)
    if args.compare and not bad:
        return _compare(args)
    return 1 if bad else 0


def _compare(args) -> int:
    from hpbroker.io.compare import compare_partitions
    from hpbroker.io.inspect import partition_dirs

    if not os.path.isdir(args.compare):
        raise UserError(f"{args.compare} is not a directory")
    one = {os.path.basename(d): d for d in partition_dirs(args.dir)}
    two = {os.path.basename(d): d for d in partition_dirs(args.compare)}
    single = len(one) == 1 and len(two) == 1
    pairs = [(next(iter(one.values())), next(iter(two.values())))] if single else \
        [(one.get(n, os.path.join(args.dir, n)), two.get(n, os.path.join(args.compare, n))) for n in sorted(set(one) | set(two))]
    differ = 0
    for d1, d2 in pairs:
        try:
            c = compare_partitions(d1, d2, args.upto)
        except ValueError as e:
            differ += 1
            print(f"DIFFER {os.path.basename(d1)}: {e}")
            continue
        if c.problem:
            differ += 1
            print(f"DIFFER {os.path.basename(d1)}: {c.problem}")
        else:
            print(f"SAME {os.path.basename(d1)}: {c.batches} batches identical below offset {c.common_end} "
                  f"(logs end at {c.ends[0]} and {c.ends[1]})")
    return 1 if differ else 0
