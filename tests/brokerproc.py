"""Start and stop real broker processes for tests.

Each broker runs as ``python -m hpbroker serve`` in its own session (process
group), on a free loopback port, with its data in a pytest tmp dir.  It is
stopped by pid (SIGTERM, then SIGKILL of its process group), never by name.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import zmq

from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.ring import cleanup_stale
from hpbroker.stats import cleanup_stale as stats_cleanup_stale
from ports import free_port  # ports no other test process is handed (tests/ports.py)


#: every port a test broker used: its shared memory is /dev/shm/hpb.p<port>.*
PORTS_USED: set[int] = set()




class BrokerProcess:
    def __init__(self, data_dir: Path, port: int | None = None, args: tuple[str, ...] = (), log_path: Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        PORTS_USED.add(self.port)
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.args = list(args)
        if "--http-port" not in self.args:  # no HTTP process unless a test asks for one (ports stay free)
            self.args += ["--http-port", "0"]
        self.log_path = log_path or self.data_dir.parent / f"broker-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> "BrokerProcess":
        self._log = open(self.log_path, "ab")
        self._log_from = self._log.tell()  # this run's lines start here
        cmd = [sys.executable, "-m", "hpbroker", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        if "--text-port" not in self.args:  # brokers of tests run side by side: no fixed ports (a test that wants one passes a free port)
            cmd += ["--text-port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ctx = zmq.Context.instance()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.flush()
                raise RuntimeError(f"broker exited with {self.proc.returncode} during start:\n{self.log()}")
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.url)
            try:
                s.send_multipart(codec.encode_request(m.Metadata(id=1, topics=[])))
                if s.poll(500):
                    rep, _ = codec.decode_reply(s.recv_multipart())
                    if isinstance(rep, m.MetadataReply) and all(rep.acceptors) and self._text_port_open():
                        return
            finally:
                s.close()
            time.sleep(0.1)
        raise RuntimeError(f"broker not ready after {timeout} s:\n{self.log()}")

    @property
    def http_url(self) -> str:
        """http://127.0.0.1:PORT of a broker started with --http-port PORT."""
        return f"http://127.0.0.1:{self.args[self.args.index('--http-port') + 1]}"

    def wait_http(self, timeout: float = 30.0) -> str:
        """Wait until the HTTP process answers /healthz; its base URL."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self.http_url
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no /healthz on {self.http_url} after {timeout} s:\n{self.log()}") from None
                time.sleep(0.1)
    def _text_port_open(self) -> bool:
        """The text listeners (if this broker has them) start after the acceptors answer; the
        supervisor says "serving" once every one listens."""
        if "--text-port" not in self.args or self.args[self.args.index("--text-port") + 1] == "0":
            return True
        with open(self.log_path, "rb") as f:
            f.seek(self._log_from)
            if b"serving on" not in f.read():
                return False
        try:
            socket.create_connection(("127.0.0.1", int(self.args[self.args.index("--text-port") + 1])), 1).close()
            return True
        except OSError:
            return False

    def child_pid(self, name: str, timeout: float = 30.0) -> int:
        """The pid of child ``name`` (e.g. "writer0", "acceptor0",
        "replicator"), from the supervisor's "started ..." log line (the
        newest one: a replicator is started again at promotion)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(rf"started {name} \(pid (\d+)\)", self.log())
            if found:
                return int(found[-1])
            time.sleep(0.1)
        raise AssertionError(f"no {name} in the broker log:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL the process group if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()
        self._log.close()
        # A broker killed with -9 leaves its rings for its restart to unlink;
        # one a test never restarts (it ended, or failed, first) is unlinked
        # here.  Only objects whose owner is dead: a broker running on this
        # port now keeps its own.
        cleanup_stale(f"p{self.port}", dead_after_ms=60_000)
        stats_cleanup_stale(f"p{self.port}")  # the stats block of a broker killed with -9
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 of the broker's whole process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._reap_group()

    def _reap_group(self) -> None:
        # Children are in the broker's process group; make sure none outlive it.
        # A zombie counts as gone: it holds nothing (its shared memory and
        # sockets are closed) and only waits for init to reap it, which can
        # take seconds (the supervisor's multiprocessing resource tracker is
        # reparented to init when the supervisor exits).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not group_alive(self.proc.pid):
                return
            if time.monotonic() > deadline - 5:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    return
            time.sleep(0.05)


def group_alive(pgid: int) -> bool:
    """Is any process of group ``pgid`` still running (zombies do not count)?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False
