"""What the process-fault sweeps share: brokers, clients of the log, kills,
progress, and summaries."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from procfaults import ROOT

from brokerproc import BrokerProcess, free_port  # noqa: F401  (re-exported)
from hpbroker import batch
from hpbroker.client.request import request
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError, ErrorCode
from rawclient import RawClient

SHM = "/dev/shm"


def env() -> dict:
    """The environment of every process a sweep starts: this tree first."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    return e


def shm_objects(instance: str) -> list[str]:
    """/dev/shm entries of ``instance`` (segments and semaphores)."""
    try:
        names = os.listdir(SHM)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.removeprefix("sem.").startswith(f"hpb.{instance}."))


def stats(url: str, timeout_ms: int = 5000) -> dict:
    return request(url, lambda i: m.Stats(id=i), timeout_ms).stats


def wait_until(pred, timeout: float, what: str, state=None) -> float:
    """Poll ``pred`` until it holds; -> seconds it took.  TimeoutError names ``what``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return time.monotonic() - t0
        except (TimeoutError, OSError, BrokerError):  # not answering (yet)
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f": {state()}" if state else ""))


def hpbroker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpbroker", *args], capture_output=True, text=True, timeout=timeout,
                          env=env())


def kill_group(b: BrokerProcess) -> float:
    """kill -9 of the broker's process group; -> the wall-clock time of the kill."""
    t = time.time()
    try:
        os.killpg(b.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return t


def kill_pid(pid: int) -> float:
    t = time.time()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return t


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(log: str, pattern: str, after: float) -> float | None:
    """Wall-clock time of the first log line matching ``pattern`` stamped at or after ``after`` (ms precision)."""
    rx = re.compile(pattern)
    for line in log.splitlines():
        mt = _STAMP.match(line)
        if not mt or not rx.search(line):
            continue
        t = datetime.strptime(mt.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if t >= after - 0.001:
            return t
    return None


def latest(url: str, topic: str, p: int) -> int:
    c = RawClient(url, timeout_ms=10_000)
    try:
        rep = c.call(m.ListOffsets(id=c.next_id(), topic=topic, partition=p, spec=m.LATEST))[0]
    finally:
        c.close()
    if rep.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
        return 0
    if rep.code != 0:
        raise RuntimeError(f"ListOffsets {topic}/{p}: {rep.code} {rep.message}")
    return rep.offset


def scan(url: str, topic: str, p: int, start: int, end: int):
    """Every batch of ``topic``/``p`` from the one holding ``start`` up to
    ``end``, CRC-checked: yields (base_offset, record count, values)."""
    c = RawClient(url, timeout_ms=30_000)
    try:
        off = start
        while off < end:
            rep, data = c.fetch(topic, p, off, max_bytes=4 << 20)
            if rep.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
                return  # nothing here: what was acknowledged in it counts as lost
            if rep.code == ErrorCode.OFFSET_OUT_OF_RANGE and off >= latest(url, topic, p):
                return  # past this log's end (an acks=1 tail the promoted slave never had): counts as lost
            if rep.code != 0:
                raise RuntimeError(f"fetch {topic}/{p}@{off}: {rep.code} {rep.message}")
            if not data:
                return
            for pos, h in batch.iter_batches(data):
                batch.check_batch(data, pos, h.batch_length)
                yield h.base_offset, h.record_count, batch.values_of(data, pos)
                off = h.base_offset + h.record_count
    finally:
        c.close()


def summary(xs: list[float]) -> str:
    """median / p90 / max of ``xs`` (seconds) as one short string."""
    if not xs:
        return "-"
    s = sorted(xs)
    p90 = s[min(len(s) - 1, int(0.9 * len(s)))]
    return f"median {statistics.median(s):.3f} s, p90 {p90:.3f} s, max {s[-1]:.3f} s (n={len(s)})"


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def data_root(base: str | None, name: str) -> Path:
    if base:
        p = Path(base) / name
        p.mkdir(parents=True, exist_ok=True)
        return p
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"hpb-{name}-"))
