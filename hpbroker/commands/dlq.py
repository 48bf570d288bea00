"""``hpbroker dlq replay TOPIC GROUP``: re-publish the dead letters of GROUP's handler on TOPIC.

``Consumer.run(on_failure="dlq")`` parks a message its handler kept failing
on in ``<TOPIC>.<GROUP>.dlq``, with its key, its headers and
``hpbroker.dlq.*`` headers saying where it came from
(:mod:`hpbroker.client.handler`).  ``replay`` reads that topic from the
committed offsets of the group ``<GROUP>.dlq-replay`` (from the start the
first time) up to its end as it is when the replay starts, and sends each
dead letter back to the topic its ``hpbroker.dlq.topic`` header names -
to the partition it came from (``hpbroker.dlq.partition``) while the topic
still has it - with its key and its original headers (the ``hpbroker.dlq.*``
ones removed), acks=all.  After each round of sends is acknowledged, the
replay group's offsets are committed past them, so a second replay starts
where this one stopped and repeats nothing it finished.

A dead letter without an ``hpbroker.dlq.topic`` header (or whose headers
do not decode) cannot be sent anywhere: it is named on stderr, counted,
and passed over.  A send that fails stops the replay: the offsets are
committed up to the first dead letter not acknowledged in each partition,
and it exits 1 (run it again to go on).  So does a dead letter the client
cannot decode (``CorruptBatch``, e.g. headers bytes that are not the
batch format's): nothing after it in its partition is replayed until its
offset is moved past it (``groups reset-offsets <GROUP>.dlq-replay``).  Two replays of the same TOPIC and
GROUP at once are not kept apart.

``--dry-run`` lists what would be sent, one line per dead letter, and
commits nothing.  A progress bar counts dead letters on stderr (by default
only when stderr is a terminal); the last line is a summary.
"""

from __future__ import annotations

import argparse
import sys
import time

from hpbroker.commands import UserError
from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error

#: give up when the dead-letter topic yields nothing for this long although the replay has not reached its end
IDLE_LIMIT_S = 30.0
POLL_RECORDS = 1000


def register(sub) -> None:
    p = sub.add_parser("dlq", help="replay dead letters (the DLQ of Consumer.run)")
    s = p.add_subparsers(dest="dlq_command", metavar="ACTION")
    s.required = True
    r = s.add_parser("replay", help="re-publish the dead letters of TOPIC.GROUP.dlq to their original topics")
    r.add_argument("topic", help="the topic the group's handler failed on")
    r.add_argument("group", help="the group whose handler failed")
    r.add_argument("--max-messages", type=int, metavar="N", help="replay at most N dead letters")
    r.add_argument("--dry-run", action="store_true", help="list what would be replayed; send and commit nothing")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: only when stderr is a terminal)")
    add_broker_args(r)
    r.set_defaults(func=_replay)


def replay_group(group: str) -> str:
    """The group whose committed offsets say how far the DLQ of ``group`` was replayed."""
    return f"{group}.dlq-replay"


class DeadLetter:
    """Where one dead letter goes back to, read from its headers."""

    __slots__ = ("msg", "topic", "partition", "headers", "error", "problem")

    def __init__(self, msg):
        from hpbroker.client.handler import DLQ_PREFIX
        from hpbroker.commands._records import BadHeaders, header_pairs

        self.msg = msg
        self.problem = "no hpbroker.dlq.topic header"
        try:
            pairs = header_pairs(msg.headers)
        except BadHeaders as e:
            pairs = []
            self.problem = str(e)
        dlq = {n[len(DLQ_PREFIX):]: v for n, v in pairs if n.startswith(DLQ_PREFIX)}
        self.topic = dlq["topic"].decode("utf-8", "replace") if dlq.get("topic") else None
        try:
            self.partition = int(dlq["partition"]) if "partition" in dlq else None
        except ValueError:
            self.partition = None
        self.error = dlq.get("error", b"").decode("utf-8", "replace")
        self.headers = [(n, v) for n, v in pairs if not n.startswith(DLQ_PREFIX)]

    def where(self) -> str:
        return f"{self.msg.topic}/{self.msg.partition}@{self.msg.offset}"


def _bar(args, total: int):
    if not (sys.stderr.isatty() if args.progress is None else args.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="replay", unit="msg", file=sys.stderr, dynamic_ncols=True)


def _note(bar, text: str) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _replay(args) -> int:
    from hpbroker.client.admin import Admin
    from hpbroker.client.handler import dlq_topic
    from hpbroker.protocol.errors import BrokerError

    if args.max_messages is not None and args.max_messages < 0:
        raise UserError("--max-messages must be >= 0", 2)
    source = dlq_topic(args.topic, args.group)
    a = Admin(args.broker, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args))
    try:
        partitions = a.list_topics().get(source)  # a broker's topics, or a cluster's global partition counts
    except BrokerError as e:
        raise user_error(e, args.broker) from None
    finally:
        a.close()
    if not partitions:
        raise UserError(f"no dead letters of group {args.group} on {args.topic}: topic {source} does not exist", 1)
    try:
        return Replay(args, source, partitions).run()
    except BrokerError as e:
        raise user_error(e, args.broker) from None


class Replay:
    def __init__(self, args, source: str, partitions: int):
        self.args = args
        self.source = source
        self.partitions = partitions
        self.group = replay_group(args.group)
        self.sent: dict[str, int] = {}  # target topic -> dead letters sent
        self.skipped = 0
        self.replayed = 0
        self.failure: str | None = None
        self.todo = 0
        self.committed: dict[int, int] = {}

    def run(self) -> int:
        from hpbroker.client.consumer import Consumer

        args = self.args
        c = Consumer(args.broker, self.source, partitions=range(self.partitions), group_id=self.group,
                     enable_auto_commit=False, auto_offset_reset="earliest", connect_timeout_ms=args.connect_timeout_ms, **curve_args(args),
                     fetch_max_wait_ms=200)
        producer = None
        try:
            ends = c.end_offsets()  # the end as the replay starts: dead letters parked meanwhile wait for the next
            done = {p: c.position(p) for p in range(self.partitions)}  # the next offset to commit
            self.committed = dict(done)
            todo = sum(max(0, ends[p] - done[p]) for p in done)
            self.todo = todo
            limit = todo if args.max_messages is None else min(todo, args.max_messages)
            if not args.dry_run and limit:
                from hpbroker.client.producer import Producer

                producer = Producer(args.broker, acks="all", linger_ms=5, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args))
            bar = _bar(args, limit)
            try:
                self._loop(c, producer, ends, done, limit, bar)
            finally:
                if bar is not None:
                    bar.close()
        finally:
            if producer is not None:
                producer.close()
            c.close(autocommit=False)
        self._summary()
        return 1 if self.failure else 0

    def _loop(self, c, producer, ends, done, limit, bar) -> None:
        from hpbroker.batch import CorruptBatch

        count = 0
        idle_since = time.monotonic()
        while count < limit and any(done[p] < ends[p] for p in done):
            try:
                msgs = c.poll(timeout_ms=500, max_records=min(POLL_RECORDS, limit - count))
            except CorruptBatch as e:  # a dead letter the client cannot decode (its headers, say): no going past it
                left = {p: done[p] for p in done if done[p] < ends[p]}
                self.failure = (f"a dead letter at or after {', '.join(f'{self.source}/{p}@{o}' for p, o in left.items())} "
                                f"cannot be decoded: {e} (move past it with groups reset-offsets {self.group})")
                return
            round_ = [m for m in msgs if done[m.partition] <= m.offset < ends[m.partition]][:limit - count]
            if not round_:
                if time.monotonic() - idle_since > IDLE_LIMIT_S:
                    left = {p: (done[p], ends[p]) for p in done if done[p] < ends[p]}
                    raise UserError(f"{self.source}: nothing read for {IDLE_LIMIT_S:.0f} s with offsets "
                                    f"{left} still to replay", 1)
                continue
            idle_since = time.monotonic()
            letters = [DeadLetter(m) for m in round_]
            if self.args.dry_run:
                self._list(letters, done, bar)
            else:
                self._send(producer, letters, done, bar)
                self._commit(c, done)  # this round is acknowledged: a second replay starts after it
            count += len(round_)
            if self.failure:
                return

    def _commit(self, c, done) -> None:
        moved = {p: o for p, o in done.items() if o != self.committed[p]}
        if moved:
            c.commit(moved)
            self.committed.update(moved)

    def _list(self, letters, done, bar) -> None:
        for d in letters:
            if d.topic is None:
                self.skipped += 1
                line = f"{d.where()}\t-\t{d.problem}: would be passed over"
            else:
                self.replayed += 1
                self.sent[d.topic] = self.sent.get(d.topic, 0) + 1
                part = "-" if d.partition is None else str(d.partition)
                line = f"{d.where()}\t{d.topic}/{part}\t{d.error}"
            if bar is not None:
                bar.write(line, file=sys.stdout)
                bar.update(1)
            else:
                print(line)
            done[d.msg.partition] = d.msg.offset + 1

    def _send(self, producer, letters, done, bar) -> None:
        from hpbroker.protocol.errors import BrokerError

        futures = []
        for d in letters:
            if d.topic is None:
                futures.append((d, None))
                continue
            try:
                counts = producer.partitions_for(d.topic)
                part = d.partition if d.partition is not None and d.partition in counts else None
                fut = producer.send(d.topic, d.msg.value, key=d.msg.key, partition=part, headers=d.headers or None)
            except (BrokerError, TypeError, ValueError) as e:
                futures.append((d, e))
                break
            futures.append((d, fut))
        producer.flush()
        stopped: set[int] = set()  # DLQ partitions with a dead letter that did not go out: commit before it
        for d, fut in futures:
            p = d.msg.partition
            if p in stopped:
                continue
            if fut is None:
                self.skipped += 1
                _note(bar, f"{d.where()}: {d.problem}; passed over")
            else:
                err = fut if isinstance(fut, Exception) else fut.exception()
                if err is not None:
                    stopped.add(p)
                    if self.failure is None:
                        self.failure = f"{d.where()} -> {d.topic}: {err} (run it again to go on)"
                    continue
                self.replayed += 1
                self.sent[d.topic] = self.sent.get(d.topic, 0) + 1
            done[p] = d.msg.offset + 1
            if bar is not None:
                bar.update(1)

    def _summary(self) -> None:
        where = ", ".join(f"{t} ({n})" for t, n in sorted(self.sent.items())) or "nowhere"
        skipped = (f"; {self.skipped} without an hpbroker.dlq.topic header (or readable headers) passed over"
                   if self.skipped else "")
        if not self.todo:
            print(f"nothing to replay: {self.source} holds no dead letters after the offsets of group {self.group}")
        elif self.failure:
            done = ("listed" if self.args.dry_run else f"replayed to {where} and committed (group {self.group})")
            print(f"replay of {self.source} stopped: {self.failure}; {self.replayed} {done}{skipped}", file=sys.stderr)
        elif self.args.dry_run:
            print(f"dry run: {self.replayed} dead letters of {self.source} would be replayed to {where}{skipped}; "
                  "nothing sent or committed")
        else:
            print(f"replayed {self.replayed} dead letters of {self.source} to {where}{skipped}; committed as group "
                  f"{self.group}")
