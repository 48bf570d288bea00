"""``hpbroker-bench text``: MetaQ's text protocol against the ZeroMQ path, same run.

    hpbroker-bench text                       # 3 rounds, medians
    hpbroker-bench text --rounds 5 --json

Each round starts a private broker with a text port (``python -m hpbroker
serve``, temp data dir, 4 partitions) and runs three loads, the order of
the first two alternating between rounds:

* ``text``: pipelined puts of ``--size`` (100) bytes on ``--connections``
  (1) text connections, ``--messages`` (1,000,000) of them, each with its
  CRC32 checksum as MetaQ's Java client sends it;
* ``zmq``: the same count and size through hpbroker's ``Producer.send_batch``;
* ``metaq``: MetaQ's published shape, 10 producers sending 256-byte
  messages (``--metaq-connections``, ``--metaq-size``), here 10 pipelined
  text connections, ``--metaq-messages`` (1,000,000) in all, against MetaQ's
  45,000 msgs/s (``../shared/METAQ.md`` section 3; target >= 10x).

Every message is acknowledged as durable (fdatasync'd) before it counts.
Each load runs in its own process (bench/_text_workers.py), released at
one instant; the broker's processes' CPU seconds (psutil, over the load)
are reported per message, which is what bounds the rate on a shared
2-core machine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import statistics
import sys
import time

from hpbroker.bench._e2e_broker import LocalBroker
from hpbroker.bench._text_workers import metaq_puts, zmq_puts

METAQ_PUBLISHED = 45_000  # msgs/s, 256 B, 10 producers (METAQ.md section 3)


def register(sub) -> None:
    p = sub.add_parser("text", help="MetaQ text protocol puts beside the ZeroMQ path, and MetaQ's 10 x 256 B shape")
    p.add_argument("--messages", type=int, default=1_000_000, help="messages of the text and zmq loads (default 1,000,000)")
    p.add_argument("--size", type=int, default=100, help="bytes per message of the text and zmq loads (default 100)")
    p.add_argument("--connections", type=int, default=1, help="text connections of the text load (default 1)")
    p.add_argument("--metaq-messages", type=int, default=1_000_000, help="messages of the metaq load (default 1,000,000)")
    p.add_argument("--metaq-connections", type=int, default=10, help="connections of the metaq load (default 10)")
    p.add_argument("--metaq-size", type=int, default=256, help="bytes per message of the metaq load (default 256)")
    p.add_argument("--window", type=int, default=4096, help="puts in flight per text connection (default 4096)")
    p.add_argument("--no-checksum", action="store_true", help="send -1 instead of each body's CRC32 (no check)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, a fresh broker each; medians (default 3)")
    p.add_argument("--processes", default="1", help="text listener processes (text_protocol.processes); several, "
                                                 "comma-separated, run each in every round (default 1)")
    p.add_argument("--read-bytes", type=int, default=None,
                   help="text_protocol.read_bytes of the broker (default: the config's, 256 KiB)")
    p.add_argument("--loads", default="text,zmq,metaq", help="which loads, comma-separated (default all three)")
    p.add_argument("--dir", default=None, help="where the temp data dirs go (default: the cwd's filesystem)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--stages", action="store_true",
                   help="no broker: time the listener's Python per put in one process (parse a chunk of "
                        "--metaq-size puts, check their CRCs, build their batch, answer them), min of 7 repeats")
    p.add_argument("--py-spy", metavar="PREFIX", default=None,
                   help="record the text listener with py-spy during each load: PREFIX-<load>-<round>.txt "
                        "(collapsed stacks; py-spy must be installed)")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the text port {port} did not open")


def _cpu(procs: dict) -> dict:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except Exception:
            pass
    return out


def _spy(procs: dict, out: str):
    """py-spy recording the first text listener until stopped (SIGINT), or None."""
    import shutil
    import subprocess

    pid = next((p.pid for name, p in sorted(procs.items()) if name.startswith("text")), None)
    exe = shutil.which("py-spy")
    if pid is None or exe is None:
        print("--py-spy: no text listener process or no py-spy", file=sys.stderr)
        return None
    return subprocess.Popen([exe, "record", "--format", "raw", "--rate", "250", "-p", str(pid), "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _load(broker: LocalBroker, port: int, kind: str, args, topic: str, tag: str = "") -> dict:
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0
    checksum = not args.no_checksum
    if kind == "text":
        target, targs = metaq_puts, (port, topic, 4, args.connections, args.messages, args.size, start_at, args.window,
                                     256, checksum)
    elif kind == "metaq":
        target, targs = metaq_puts, (port, topic, 4, args.metaq_connections, args.metaq_messages, args.metaq_size,
                                     start_at, args.window, 256, checksum)
    else:
        target, targs = zmq_puts, (broker.url, topic, 4, args.messages, args.size, start_at)
    with ctx.Pool(1) as pool:
        res = pool.apply_async(target, targs)
        procs = broker.processes()
        while time.time() < start_at:
            time.sleep(0.005)
        spy = _spy(procs, f"{args.py_spy}-{kind}{tag}.txt") if args.py_spy and kind != "zmq" else None
        before = _cpu(procs)
        out = res.get(timeout=3600)
        after = _cpu(procs)
        if spy is not None:
            import signal

            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    n = out["messages"]
    out["msgs_per_s"] = n / out["seconds"]
    cpu = {k: (after[k] - before[k]) / n * 1e6 for k in after if k in before and k != "supervisor"}
    texts = [k for k in cpu if k.startswith("text")]
    if texts:
        cpu["text"] = sum(cpu.pop(k) for k in texts)  # every text listener process together
    out["cpu_us_per_msg"] = {k: round(v, 3) for k, v in cpu.items()}
    out["cpu_us_per_msg"]["client"] = round(out.pop("client_cpu_s") / n * 1e6, 3)
    if out["bad"]:
        raise RuntimeError(f"{kind}: {out['bad']} puts were not answered 200")
    return out


def stages(args) -> dict:
    """The text listener's Python per put without sockets, stage by stage
    (what Puts.add_run, Puts.flush and Puts._answer do with a PutRun), in
    microseconds per put: the CPU the listener needs per put, steadier on a
    shared machine than a whole run's."""
    import timeit
    import zlib

    import numpy as np

    from hpbroker.text import puts as P
    from hpbroker.text import records, replies
    from hpbroker.text.parser import Parser

    n = max(1, (256 << 10) // (args.metaq_size + 40))  # what one read of text_protocol.read_bytes holds
    body = b"x" * args.metaq_size
    crc = -1 if args.no_checksum else zlib.crc32(body) & 0x7FFFFFFF
    chunk = b"".join(b"put bench-metaq 3 %d 0 %d %d\r\n" % (len(body), crc, 1000 + i) + body for i in range(n))
    parser = Parser()
    run = parser.feed(chunk)[0]
    first_id = 2065358124490948608

    def check():
        if run.checksums is not None:
            got = np.fromiter(map(P.crc32, run.bodies), dtype=np.int64, count=n) & 0x7FFFFFFF
            assert (got == np.asarray(run.checksums)).all()

    sizes = records.put_sizes(run.bodies)

    def answer():
        offsets = np.empty(n, dtype=np.int64)
        offsets[0] = 10 ** 9
        np.cumsum(sizes[:-1], out=offsets[1:])
        offsets[1:] += 10 ** 9
        return replies.put_ok(run.opaques, range(first_id, first_id + n), 3, offsets)

    out = {}
    for name, f in (("parse", lambda: parser.feed(chunk)), ("crc", check),
                    ("batch", lambda: records.build_batch(run.bodies, None, first_id, 1)), ("answer", answer)):
        out[name] = round(min(timeit.repeat(f, number=20, repeat=7)) / 20 / n * 1e6, 3)
    out["total"] = round(sum(out.values()), 3)
    out["puts_per_chunk"] = n
    return out


def run(args) -> int:
    if args.stages:
        out = stages(args)
        print(json.dumps(out) if args.json else
              " ".join(f"{k} {v}" for k, v in out.items() if k != "puts_per_chunk") +
              f" us/put ({out['puts_per_chunk']} puts of {args.metaq_size} B per chunk)")
        return 0
    loads = [x for x in args.loads.split(",") if x]
    procs = [int(x) for x in args.processes.split(",") if x]
    kinds = [k if k == "zmq" or len(procs) == 1 else f"{k}@{p}" for p in procs for k in loads
             if k != "zmq" or p == procs[0]]
    results: dict[str, list] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for p in (procs if r % 2 == 0 else procs[::-1]):
            port = _free_port()
            serve = ["--partitions", "4", "--text-port", str(port), "--text-processes", str(p)]
            cfg_file = None
            if args.read_bytes:
                import tempfile

                with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
                    f.write(f"[text_protocol]\nread_bytes = {args.read_bytes}\n")
                cfg_file = f.name
                serve += ["--config", cfg_file]
            broker = LocalBroker(args.dir, serve_args=serve)
            try:
                broker.start()
                _wait_port(port)
                order = [k for k in loads if k != "zmq" or p == procs[0]]
                if r % 2 and "text" in order and "zmq" in order:
                    i, j = order.index("text"), order.index("zmq")
                    order[i], order[j] = order[j], order[i]
                for kind in order:
                    out = _load(broker, port, kind, args, f"bench-{kind}", f"-{r + 1}-{p}")
                    name = kind if kind == "zmq" or len(procs) == 1 else f"{kind}@{p}"
                    results[name].append(out)
                    print(f"round {r + 1}/{args.rounds} {name}: {out['msgs_per_s']:,.0f} msgs/s, CPU us/msg "
                          f"{out['cpu_us_per_msg']}", file=sys.stderr)
            finally:
                broker.stop()
                broker.cleanup()
                if cfg_file:
                    os.unlink(cfg_file)
    summary = {}
    for kind, outs in results.items():
        rates = [o["msgs_per_s"] for o in outs]
        cpu = {}
        for name in outs[0]["cpu_us_per_msg"]:
            cpu[name] = statistics.median(o["cpu_us_per_msg"].get(name, 0) for o in outs)
        summary[kind] = {"msgs_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                         "cpu_us_per_msg": cpu, "runs": rates}
    for kind in results:
        if kind.startswith("text") and "zmq" in results:
            ratios = [t["msgs_per_s"] / z["msgs_per_s"] for t, z in zip(results[kind], results["zmq"])]
            summary[f"{kind}_over_zmq"] = {"median": statistics.median(ratios), "runs": ratios}
        if kind.startswith("metaq"):
            summary[f"{kind}_over_published"] = summary[kind]["msgs_per_s"] / METAQ_PUBLISHED
    summary["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for kind in kinds:
            s = summary[kind]
            print(f"{kind:8s} {s['msgs_per_s']:>12,.0f} msgs/s (range {s['min']:,.0f}-{s['max']:,.0f}); "
                  f"CPU us/msg {s['cpu_us_per_msg']}")
        for kind in kinds:
            if f"{kind}_over_zmq" in summary:
                r = summary[f"{kind}_over_zmq"]
                print(f"{kind} / zmq (same round): {r['median']:.3f} (runs {', '.join(f'{x:.3f}' for x in r['runs'])})")
            if f"{kind}_over_published" in summary:
                print(f"{kind} / MetaQ's published 45,000 msgs/s: {summary[f'{kind}_over_published']:.1f}x")
    return 0
