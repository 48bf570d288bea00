"""``hpbroker tail`` as a user runs it: real files, real rotation (by hand
and by Debian's logrotate), a real broker process, the agent killed and
the broker killed mid-stream.

Every line carries its file's stream id and a sequence number, 100 bytes
a line, so order, loss and duplicates are read straight off the topic.
Every process is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from brokerproc import BrokerProcess
from hpbroker import Consumer

LINE = 100  # bytes per line, "\n" included


def line(stream: int, seq: int) -> bytes:
    head = b"s%d %09d " % (stream, seq)
    return head + b"x" * (LINE - 1 - len(head)) + b"\n"


def seq_of(value: bytes) -> int:
    return int(value.split(b" ", 2)[1])


class Agent:
    """``python -m hpbroker tail ...`` in its own session; stderr to a file."""

    def __init__(self, tmp_path: Path, url: str, *args: str, state: Path | None = None, name: str = "agent"):
        self.state = state or tmp_path / "state"
        self.err_path = tmp_path / f"{name}-{time.monotonic_ns()}.err"
        self._err = open(self.err_path, "wb")
        cmd = [sys.executable, "-m", "hpbroker", "tail", "--broker", url, "--state-dir", str(self.state),
               "--poll-interval-ms", "50", "--status-interval-ms", "500", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
                                     start_new_session=True)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_following(self, what: str = "following", timeout: float = 30) -> "Agent":
        """Until the agent has said ``what`` on stderr (its first scan found the file)."""
        deadline = time.monotonic() + timeout
        while what not in self.stderr():
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, self.stderr()
            time.sleep(0.02)
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._err.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._err.close()

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._err.close()

    def checkpoint(self) -> dict:
        try:
            return json.loads((self.state / "checkpoints.json").read_text())
        except (OSError, ValueError):
            return {"files": []}


@pytest.fixture
def agents():
    started: list[Agent] = []
    yield started
    for a in started:  # whatever a test left running (it failed half-way)
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(10)


def read_topic(url: str, topic: str, want: int | None = None, timeout: float = 60.0, idle: float = 1.5) -> dict[int, list[bytes]]:
    """Every value of ``topic`` by partition, in offset order: until ``want``
    values arrived, or nothing arrived for ``idle`` seconds."""
    out: dict[int, list[bytes]] = {}
    n = 0
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    with Consumer(url, topic, auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        while time.monotonic() < deadline:
            msgs = c.poll(timeout_ms=200, max_records=100_000)
            for m in msgs:
                out.setdefault(m.partition, []).append(m.value)
            n += len(msgs)
            if msgs:
                last = time.monotonic()
            if want is not None and n >= want:
                break
            if want is None and time.monotonic() - last > idle:
                break
    return out


def one_partition(parts: dict[int, list[bytes]]) -> list[int]:
    assert len(parts) == 1, f"a file's lines went to partitions {sorted(parts)}"
    return [seq_of(v) for v in next(iter(parts.values()))]


class Writer(threading.Thread):
    """Appends lines of one stream to ``path`` (opened by name at each
    burst, as an application that reopens its log would), ``burst`` lines
    every ``pause`` s.  ``lock`` is held while a test rotates."""

    def __init__(self, path: Path, total: int, stream: int = 0, burst: int = 500, pause: float = 0.005):
        super().__init__(daemon=True)
        self.path, self.total, self.stream, self.burst, self.pause = path, total, stream, burst, pause
        self.lock = threading.Lock()
        self.n = 0

    def run(self) -> None:
        while self.n < self.total:
            k = min(self.burst, self.total - self.n)
            with self.lock:
                with open(self.path, "ab") as f:
                    f.write(b"".join(line(self.stream, i) for i in range(self.n, self.n + k)))
                self.n += k
            time.sleep(self.pause)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.n < n and time.monotonic() < deadline:
            time.sleep(0.01)


def test_steady_state_every_line_once_in_order_then_sigint_exits_0(broker, tmp_path, agents):
    logs = tmp_path / "logs"
    logs.mkdir()
    writers = [Writer(logs / f"f{i}.log", 30_000, stream=i, pause=0.03) for i in range(2)]  # ~2 s: status lines
    for w in writers:
        w.start()
    a = Agent(tmp_path, broker.url, "--topic", "steady", str(logs / "*.log"))
    agents.append(a)
    a.wait_following()
    late = Writer(logs / "late.log", 5_000, stream=7)  # a file that appears while the agent runs
    time.sleep(0.5)
    late.start()
    for w in (*writers, late):
        w.join(60)
    parts = read_topic(broker.url, "steady", want=65_000)
    assert a.stop(signal.SIGINT) == 0, a.stderr()
    by_stream: dict[int, list[int]] = {}
    for vals in parts.values():
        for v in vals:
            by_stream.setdefault(int(v[1:2]), []).append(seq_of(v))
    assert by_stream == {0: list(range(30_000)), 1: list(range(30_000)), 7: list(range(5_000))}
    err = a.stderr()
    assert "lines/s" in err and "lag" in err, err  # the status line
    assert "late.log: following from the start" in err
    assert "stopped: 65,000 lines" in err
    assert read_topic(broker.url, "steady", idle=1.0) == parts  # nothing more came after


def test_rename_rotation_and_copytruncate_while_the_agent_runs(broker, tmp_path, agents):
    log = tmp_path / "app.log"
    log.touch()
    w = Writer(log, 60_000, pause=0.01)
    a = Agent(tmp_path, broker.url, "--topic", "rot", str(log))
    agents.append(a)
    a.wait_following()
    w.start()
    for i, (at, how) in enumerate([(10_000, "rename"), (20_000, "copytruncate"), (35_000, "rename"),
                                   (45_000, "copytruncate")]):
        w.wait_for(at)
        time.sleep(0.05)
        with w.lock:
            if how == "rename":
                os.rename(log, tmp_path / f"app.log.{i}")
            else:
                shutil.copyfile(log, tmp_path / f"app.log.{i}")
                with open(log, "r+b") as f:
                    f.truncate(0)
    w.join(60)
    parts = read_topic(broker.url, "rot", want=60_000)
    assert a.stop() == 0, a.stderr()
    seqs = one_partition(parts)
    assert seqs == list(range(60_000)), (len(seqs), a.stderr())
    err = a.stderr()
    assert err.count("truncated") == 2 and err.count("renamed away") == 2, err


@pytest.mark.skipif(shutil.which("logrotate") is None and not os.path.exists("/usr/sbin/logrotate"),
                    reason="logrotate is not installed (tools/debian-packages.txt)")
@pytest.mark.parametrize("mode", ["copytruncate", "create"])
def test_logrotate_while_the_agent_runs(broker, tmp_path, agents, mode):
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    log = tmp_path / "app.log"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n  rotate 10\n  missingok\n  nocompress\n  {mode}\n}}\n")
    state = tmp_path / "logrotate.state"
    log.touch()
    w = Writer(log, 40_000, pause=0.01)
    a = Agent(tmp_path, broker.url, "--topic", f"lr-{mode}", str(log))
    agents.append(a)
    a.wait_following()
    w.start()
    for at in (8_000, 16_000, 24_000, 32_000):
        w.wait_for(at)
        time.sleep(0.05)
        with w.lock:  # the application pauses while logrotate works (its postrotate would reopen the log)
            r = subprocess.run([logrotate, "-f", "-s", str(state), str(conf)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
    w.join(60)
    parts = read_topic(broker.url, f"lr-{mode}", want=40_000)
    assert a.stop() == 0, a.stderr()
    assert one_partition(parts) == list(range(40_000)), a.stderr()
    assert len(list(tmp_path.glob("app.log.*"))) == 4
    assert a.stderr().count("truncated" if mode == "copytruncate" else "renamed away") == 4, a.stderr()


def test_broker_killed_and_restarted_mid_stream_nothing_lost_order_kept(tmp_path, agents):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4")).start()
    try:
        cfg = tmp_path / "tail.toml"
        log = tmp_path / "app.log"
        cfg.write_text(f'broker_stall_ms = 1000\nretry_backoff_ms = 200\n[[source]]\ntopic = "br"\npaths = ["{log}"]\n')
        log.touch()
        w = Writer(log, 60_000, pause=0.01)
        a = Agent(tmp_path, b.url, "--config", str(cfg))
        agents.append(a)
        a.wait_following()
        w.start()
        w.wait_for(20_000)
        b.kill()  # kill -9 of the whole broker
        time.sleep(2.5)
        b.start()
        w.join(60)
        parts = read_topic(b.url, "br", want=60_000, timeout=90)
        time.sleep(0.5)
        parts = read_topic(b.url, "br", idle=1.0, timeout=90)  # and whatever duplicates came after
        assert a.stop() == 0, a.stderr()
        seqs = one_partition(parts)
        first = list(dict.fromkeys(seqs))
        assert first == list(range(60_000)), a.stderr()  # nothing lost, first arrivals in order
        dups = len(seqs) - len(first)
        assert dups * LINE <= 32 << 20, dups  # at most what was in flight
        err = a.stderr()
        trouble = err.count("has not acknowledged") + err.count("sending to the broker failed")
        assert trouble == 1 and err.count("acknowledges again") == 1, err  # once per change, not per retry
    finally:
        b.stop()


def test_agent_killed_mid_stream_resends_only_the_unacknowledged_tail(broker, tmp_path, agents):
    log = tmp_path / "big.log"
    n = 400_000
    with open(log, "wb") as f:
        for s in range(0, n, 10_000):
            f.write(b"".join(line(0, i) for i in range(s, s + 10_000)))
    a = Agent(tmp_path, broker.url, "--topic", "kill9", "--max-inflight-bytes", str(4 << 20), str(log))
    agents.append(a)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = a.checkpoint()["files"]
        if files and files[0]["offset"] >= 50 * LINE * 1000:
            break
        time.sleep(0.01)
    a.kill()
    resumed_at = a.checkpoint()["files"][0]["offset"]
    assert 0 < resumed_at < n * LINE and resumed_at % LINE == 0
    with open(log, "ab") as f:  # more lines while it was down
        f.write(b"".join(line(0, i) for i in range(n, n + 1000)))
    b = Agent(tmp_path, broker.url, "--topic", "kill9", "--once", str(log), name="again")
    agents.append(b)
    assert b.wait(60) == 0, b.stderr()
    assert f"from its checkpoint at {resumed_at}" in b.stderr()
    seqs = one_partition(read_topic(broker.url, "kill9", idle=2.0))
    first = list(dict.fromkeys(seqs))
    assert first == list(range(n + 1000))  # nothing lost, in order
    counts = Counter(seqs)
    dup_seqs = sorted(s for s, k in counts.items() if k > 1)
    assert all(k <= 2 for k in counts.values())
    if dup_seqs:  # duplicates only from the checkpoint on, and no more than was in flight: the unacknowledged tail
        assert dup_seqs[0] >= resumed_at // LINE, (dup_seqs[0], resumed_at)
        assert dup_seqs == list(range(dup_seqs[0], dup_seqs[0] + len(dup_seqs)))  # one run of lines
        assert len(dup_seqs) * LINE <= (4 << 20) + (2 << 20), len(dup_seqs)  # in flight + the checkpoint write's lag


def test_multiline_records_join_stack_traces(broker, tmp_path, agents):
    log = tmp_path / "java.log"
    records = []
    for i in range(300):
        rec = f"2024-01-01 12:00:{i % 60:02d} ERROR request {i} failed"
        if i % 3 == 0:
            rec += f"\njava.lang.IllegalStateException: bad {i}\n\tat a.B.c(B.java:{i})\n\tat a.B.d(B.java:1)"
        records.append(rec.encode())
    log.write_bytes(b"\n".join(records) + b"\n")
    a = Agent(tmp_path, broker.url, "--topic", "ml", "--multiline-start", r"\d{4}-\d\d-\d\d ", "--once", str(log))
    agents.append(a)
    assert a.wait(60) == 0, a.stderr()
    parts = read_topic(broker.url, "ml", want=300)
    assert next(iter(parts.values())) == records


@pytest.mark.parametrize("args, toml, words", [
    (["--topic", "t"], None, "give --topic and at least one PATH_OR_GLOB"),
    (["--config", "{cfg}", "--topic", "t"], "[[source]]\ntopic='t'\npaths=['x']\n", "drop --topic"),
    (["--config", "{cfg}"], "[[source]\n", "not valid TOML"),
    (["--config", "{cfg}"], "colour = 1\n[[source]]\ntopic='t'\npaths=['x']\n", "unknown key 'colour'"),
    (["--config", "{cfg}"], "[[source]]\ntopic='t'\npaths=['x']\nmultiline_start='('\n", "source[0].multiline_start: bad regex"),
    (["--config", "{cfg}"], "[[source]]\npaths=['x']\n", "source[0]: topic is required"),
    (["--config", "{tmp}/missing.toml"], None, "cannot read it"),
    (["--topic", "t", "--key-regex", "nogroup", "x.log"], None, "needs a group"),
    (["--topic", "t", "--poll-interval-ms", "0", "x.log"], None, "poll_interval_ms: 0 is out of range"),
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys, args, toml, words):
    """In-process (cli.main, as the entry point runs it): these fail before any socket."""
    from hpbroker.cli import main

    cfg = tmp_path / "tail.toml"
    if toml is not None:
        cfg.write_text(toml)
    args = [x.replace("{cfg}", str(cfg)).replace("{tmp}", str(tmp_path)) for x in args]
    code = main(["tail", "--broker", "tcp://127.0.0.1:1", "--state-dir", str(tmp_path / "st"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and words in err, err


def test_a_bad_config_from_the_command_line_process(tmp_path):
    cfg = tmp_path / "tail.toml"
    cfg.write_text("[[source]]\ntopic = 't'\npaths = ['x']\nkey_regex = '('\n")
    r = subprocess.run([sys.executable, "-m", "hpbroker", "tail", "--config", str(cfg), "--state-dir",
                        str(tmp_path / "st")], capture_output=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1, r.stderr
    assert r.stderr.startswith(b"hpbroker tail: ") and b"source[0].key_regex: bad regex" in r.stderr, r.stderr


def test_a_second_agent_on_the_same_state_dir_is_refused(broker, tmp_path, agents):
    log = tmp_path / "a.log"
    log.write_bytes(line(0, 0))
    a = Agent(tmp_path, broker.url, "--topic", "lock", str(log))
    agents.append(a)
    deadline = time.monotonic() + 30
    while "following" not in a.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    r = subprocess.run([sys.executable, "-m", "hpbroker", "tail", "--broker", broker.url, "--state-dir", str(a.state),
                        "--topic", "lock", str(log)], capture_output=True, timeout=60)
    assert r.returncode == 1 and b"another hpbroker tail" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
    assert a.stop() == 0


def test_broker_down_at_start_the_agent_waits_says_so_once_then_ships(tmp_path, agents):
    from brokerproc import free_port

    port = free_port()
    log = tmp_path / "a.log"
    log.write_bytes(b"".join(line(0, i) for i in range(1000)))
    a = Agent(tmp_path, f"tcp://127.0.0.1:{port}", "--topic", "late", "--connect-timeout-ms", "300", str(log))
    agents.append(a)
    a.wait_following("no answer from the broker")
    time.sleep(1.5)  # a few retries go by, unannounced
    b = BrokerProcess(tmp_path / "data", port=port, args=("--partitions", "4")).start()
    try:
        parts = read_topic(b.url, "late", want=1000)
        assert a.stop() == 0, a.stderr()
        assert one_partition(parts) == list(range(1000))
        err = a.stderr()
        assert err.count("no answer from the broker") == 1 and "answers; shipping" in err, err
    finally:
        b.stop()
