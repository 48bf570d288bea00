"""``hpbroker tail``: ship log files into the broker, following them as ``tail -F`` does.

    hpbroker tail --broker URL --topic T PATH_OR_GLOB...
    hpbroker tail --broker URL --config FILE.toml

One line per record (or one multiline record per start line), sent with
``Producer.send_batch``; each file's position is checkpointed in
``--state-dir`` once the broker has acknowledged it.  Runs until SIGTERM or
SIGINT (then: stop reading, wait for what is in flight, write the
checkpoint, exit 0), or with ``--once`` until every file is shipped.
docs/tail.md has every setting; the logic is in :mod:`hpbroker.tail`.
"""

from __future__ import annotations

import signal
import sys
import threading

from hpbroker.commands import UserError
from hpbroker.commands._broker_args import add_broker_args, curve_args, user_error

def register(sub) -> None:
    p = sub.add_parser("tail", help="ship log files into the broker, following them as tail -F does",
                       description="Ship log files (one message per line, or per multiline record) into the broker, "
                                   "following them through rotation; see docs/tail.md.")
    p.add_argument("paths", nargs="*", metavar="PATH_OR_GLOB", help="files to follow (globs are expanded by the agent, "
                   "again at every poll, so new files are found)")
    add_broker_args(p)
    p.add_argument("--config", metavar="FILE", help="a TOML file with [[source]] tables and agent settings "
                   "(instead of --topic and paths)")
    s = p.add_argument_group("the source (without --config)")
    s.add_argument("--topic", help="topic to ship to")
    s.add_argument("--file-regex", metavar="RE", help="follow only files whose name (not directory) matches RE")
    s.add_argument("--encoding", default=None, metavar="ENC", help="the files' encoding (default utf-8); "
                   "lines are shipped as the bytes the file holds, the encoding is for the patterns")
    s.add_argument("--multiline-start", metavar="RE", help="a line matching RE starts a record; other lines are "
                   "appended to the record before them (e.g. Java stack traces)")
    s.add_argument("--multiline-timeout-ms", type=int, metavar="MS", help="ship the last record after the file has "
                   "been quiet for MS (default 2000)")
    s.add_argument("--key", help="send every record with this key")
    s.add_argument("--key-regex", metavar="RE", help="the key of each record: group 'key' or group 1 of RE")
    s.add_argument("--partition", type=int, metavar="P", help="send every record to partition P")
    a = p.add_argument_group("the agent (these override the config file)")
    a.add_argument("--state-dir", metavar="DIR", help="where the checkpoints are kept (default ~/.hpbroker/tail)")
    a.add_argument("--poll-interval-ms", type=int, metavar="MS", help="how often files and globs are looked at (default 250)")
    a.add_argument("--status-interval-ms", type=int, metavar="MS", help="how often the status line is printed (default 5000)")
    a.add_argument("--acks", choices=["1", "all"], help="1: the broker's durable commit; all: the replicas too (default 1)")
    a.add_argument("--start-at", choices=["beginning", "end"], help="where files found at the first start, with no "
                   "checkpoint, are read from (default beginning)")
    a.add_argument("--max-inflight-bytes", type=int, metavar="N", help="stop reading while N bytes are unacknowledged "
                   "(default 32 MiB)")
    a.add_argument("--once", action="store_true", help="ship what the files hold (unterminated last lines included), "
                   "wait for the acknowledgements, write the checkpoint, exit")
    a.add_argument("--quiet", action="store_true", help="no status line and no file notes (warnings still go to stderr)")
    p.set_defaults(func=run)


_SOURCE_FLAGS = ("file_regex", "encoding", "multiline_start", "multiline_timeout_ms", "key", "key_regex", "partition")
_AGENT_FLAGS = ("state_dir", "poll_interval_ms", "status_interval_ms", "acks", "start_at", "max_inflight_bytes")


def build_config(args):
    """The agent's settings from --config or from the flags; UserError (exit 2) when wrong."""
    from hpbroker.tail import config as tc

    try:
        if args.config:
            given = [f"--{n.replace('_', '-')}" for n in ("topic", *_SOURCE_FLAGS) if getattr(args, n) is not None]
            if given or args.paths:
                what = ", ".join(given + (["paths"] if args.paths else []))
                raise UserError(f"--config describes the sources: drop {what}", 2)
            doc = tc.load_dict(args.config)
        else:
            if not args.topic or not args.paths:
                raise UserError("give --topic and at least one PATH_OR_GLOB, or --config FILE", 2)
            src = {"topic": args.topic, "paths": list(args.paths)}
            src.update({n: getattr(args, n) for n in _SOURCE_FLAGS if getattr(args, n) is not None})
            doc = {"source": [src]}
        for n in _AGENT_FLAGS:
            v = getattr(args, n)
            if v is not None:
                doc[n] = int(v) if n == "acks" and v == "1" else v
        return tc.from_dict(doc)
    except tc.ConfigError as e:
        where = f"{args.config}: " if args.config else ""
        raise UserError(f"{where}{e}", 2) from None


def run(args) -> int:
    from hpbroker.tail.checkpoint import CheckpointStore, StateDirLocked
    from hpbroker.tail.config import state_dir

    cfg = build_config(args)
    store = CheckpointStore(state_dir(cfg))
    try:
        store.lock()
    except StateDirLocked as e:
        raise UserError(str(e), 1) from None
    except OSError as e:
        raise UserError(f"state directory {store.directory}: {e.strerror}", 1) from None
    try:
        store.load()  # an unreadable checkpoint stops us here, before anything is sent
    except ValueError as e:
        raise UserError(str(e), 1) from None

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _ship(args, cfg, store, stop)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        store.unlock()


def _err(text: str) -> None:
    print(f"hpbroker tail: {text}", file=sys.stderr, flush=True)


def _ship(args, cfg, store, stop: threading.Event) -> int:
    from hpbroker.client.producer import Producer
    from hpbroker.protocol.errors import BrokerError, ErrorCode
    from hpbroker.tail.agent import Agent

    meta = _broker_metadata(cfg, args, stop)
    if meta is None:
        return 0  # stopped while waiting for the broker
    partitions, max_batch, max_request = meta
    if cfg.max_record_bytes + 16 + 64 > max_batch:
        raise UserError(f"max_record_bytes ({cfg.max_record_bytes}) does not fit the broker's max_batch_bytes "
                        f"({max_batch}): lower it", 2)
    # retries=0: the agent retries itself, a partition's requests in order, so that no retry can
    # put a later batch of a file before an earlier one (docs/tail.md, "Order"); the agent bounds
    # the requests in flight per partition, so the Producer's own bound (per acceptor) is wide
    producer = Producer(args.broker, acks=cfg.acks, retries=0, max_in_flight=64, linger_ms=0,
                        buffer_memory=2 * cfg.max_inflight_bytes + 2 * max_request + (16 << 20),
                        connect_timeout_ms=args.connect_timeout_ms, **curve_args(args), max_block_ms=max(60_000, args.connect_timeout_ms))
    try:
        def send(topic, partition, values, keys, on_done):
            producer.send_batch(topic, values, partition=partition, keys=keys,
                                callback=lambda _md, exc: on_done(exc))

        def fatal(exc):
            if isinstance(exc, BrokerError) and exc.code == ErrorCode.MESSAGE_TOO_LARGE:
                return f"the broker refuses a request as too large ({exc}): lower max_record_bytes"
            return None

        agent = Agent(cfg, send, partitions, store, err=_err, quiet=args.quiet, fatal=fatal,
                      max_request_bytes=min(max_request, max_batch))
        return agent.run(stop, once=args.once)
    finally:
        producer.close(timeout=1.0)


def _broker_metadata(cfg, args, stop) -> tuple[dict[str, int], int, int] | None:
    """Each topic's partition count and the broker's batch and request
    limits; waits (saying so once) while the broker does not answer."""
    from hpbroker.protocol.errors import BrokerError, ErrorCode

    topics = list(dict.fromkeys(s.topic for s in cfg.sources))
    cluster = args.broker.strip().startswith("zk://")
    ask = _cluster_metadata if cluster else _one_broker_metadata
    said = False
    backoff = 1.0
    while True:
        try:
            partitions, max_batch, max_request = ask(args, topics)
            break
        except BrokerError as e:
            if not (e.code == ErrorCode.REQUEST_TIMED_OUT or cluster and e.code == ErrorCode.NOT_LEADER):
                raise user_error(e, args.broker) from None  # (NOT_LEADER in a cluster: a set mid-failover)
            if not said:
                why = f" ({e})" if cluster else ""
                _err(f"no answer from the {'cluster' if cluster else 'broker'} at {args.broker}{why}; retrying until "
                     "it answers")
                said = True
            if stop.wait(backoff):
                return None
            backoff = min(backoff * 2, 10.0)
    if said:
        _err(f"the {'cluster' if cluster else 'broker'} at {args.broker} answers; shipping")
    missing = [t for t in topics if not partitions.get(t)]
    if missing:
        raise UserError(f"the {'cluster' if cluster else 'broker'} does not know the topic(s) {', '.join(missing)}", 1)
    for s in cfg.sources:
        if s.partition is not None and s.partition >= partitions[s.topic]:
            raise UserError(f"source {s.name!r}: partition {s.partition} does not exist ({s.topic} has "
                            f"{partitions[s.topic]} partitions)", 2)
    return partitions, max_batch, max_request


def _one_broker_metadata(args, topics: list[str]) -> tuple[dict[str, int], int, int]:
    """Each topic's partition count and the broker's batch and request limits."""
    from hpbroker.client.admin import Admin
    from hpbroker.protocol.errors import BrokerError

    with Admin(args.broker, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args)) as adm:
        rep = adm.metadata(topics)
    partitions = {}
    for t in rep.topics:
        if t.code:
            raise user_error(BrokerError(t.code, f"topic {t.name}"), args.broker)
        partitions[t.name] = len(t.partitions)
    return partitions, rep.max_batch_bytes or (4 << 20), rep.max_request_bytes or (4 << 20)


def _cluster_metadata(args, topics: list[str]) -> tuple[dict[str, int], int, int]:
    """zk://: each topic's global partition count (docs/cluster.md) and the
    smallest batch and request limits of the masters that hold them; a topic
    ZooKeeper does not know counts 0 partitions."""
    from hpbroker.client.admin import Admin
    from hpbroker.protocol.errors import BrokerError, ErrorCode

    try:
        adm = Admin(args.broker, connect_timeout_ms=args.connect_timeout_ms, **curve_args(args))
    except Exception as e:  # noqa: BLE001 - kazoo's connection errors: ZooKeeper down, retried by the caller
        raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"ZooKeeper: {e}") from None
    with adm:
        partitions = {t: len(adm.partitions(t)) for t in topics}
        max_batch, max_request = adm.limits(topics)  # NOT_LEADER while a set has no master: retried
    return partitions, max_batch, max_request
