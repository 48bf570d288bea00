"""``hpbroker log dump|verify DIR``: look inside segment files.

``dump`` lists every batch: segment file, byte position, base and last
offset, record count, timestamps and CRC status.  ``verify`` checks every
batch (CRC32C, layout, offset continuity) and exits 0 when all are intact,
else prints each bad batch with its file and position and exits 1.  DIR is a
partition directory (``<topic>-<partition>``) or a data directory (all its
partitions).  Both only read; they are safe next to a running broker.

``verify`` (and its ``--compare``) reads every byte of the logs, which on a
production data directory takes minutes: on a terminal it shows a progress
bar in bytes on stderr (``--progress`` forces it, ``--no-progress`` hides it).
"""

from __future__ import annotations

import argparse
import os
import sys

from hpbroker.commands import UserError
from hpbroker.io import layout
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
    v.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar in bytes on stderr (default: only when stderr is a terminal)")
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


def _segment_bytes(dirs: list[str]) -> int:
    return sum(os.path.getsize(layout.log_path(d, b)) for d in dirs if os.path.isdir(d) for b in layout.list_segments(d))


def _bar(args, dirs: list[str], desc: str):
    """A tqdm bar over the bytes of ``dirs``' segments, or None (see --progress)."""
    if not (sys.stderr.isatty() if args.progress is None else args.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=_segment_bytes(dirs), desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, dynamic_ncols=True)


def _verify(args) -> int:
    batches = bad = 0
    dirs = _dirs(args.dir)
    bar = _bar(args, dirs, "verify")
    for d in dirs:
        read_to: dict[str, int] = {}  # segment -> bytes the bar has counted (bad spots are skipped over)
        for it in inspect_partition(d):
            if it.header is None:
                bad += 1
                print(f"BAD {it.path} position {it.pos}: {it.problem}")
            else:
                batches += 1
            if bar is not None:
                end = it.pos + (it.header.batch_length if it.header is not None else 0)
                if end > read_to.get(it.path, 0):
                    bar.update(end - read_to.get(it.path, 0))
                    read_to[it.path] = end
    if bar is not None:
        bar.close()
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
    bar = _bar(args, [d for pair in pairs for d in pair], "compare")
    for d1, d2 in pairs:
        try:
            c = compare_partitions(d1, d2, args.upto, progress=None if bar is None else bar.update)
        except ValueError as e:
            differ += 1
            print(f"DIFFER {os.path.basename(d1)}: {e}")
            continue
        finally:
            if bar is not None:
                bar.clear()  # the verdict lines go on a line of their own
        if c.problem:
            differ += 1
            print(f"DIFFER {os.path.basename(d1)}: {c.problem}")
        else:
            print(f"SAME {os.path.basename(d1)}: {c.batches} batches identical below offset {c.common_end} "
                  f"(logs end at {c.ends[0]} and {c.ends[1]})")
    if bar is not None:
        bar.close()
    return 1 if differ else 0
