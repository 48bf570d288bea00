"""Redis Streams baseline for ``hpbroker-bench``: XADD with the durable
AOF setting (``appendonly yes``, ``appendfsync always``).

A private ``redis-server`` runs on a free loopback port with a temp dir (in
its own session, stopped by pid).  It is driven two ways, each with the
same message count and size as the hpbroker run:

* ``redis-benchmark`` (the C load generator), pipelined:
  ``redis-benchmark -p PORT -n N -P 64 -c C -q --csv XADD s '*' f <payload>``;
* redis-py (``pip install redis``), one connection, pipelines of 64 XADDs.

Without ``redis-server`` (Debian: ``apt-get install redis-server``) the
baseline is skipped with a one-line note.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def available() -> str | None:
    """None when redis-server is installed, else why not."""
    if shutil.which("redis-server") is None:
        return "redis baseline skipped: redis-server is not installed (apt-get install redis-server)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, root: str):
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=root)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "RedisServer":
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
               "--protected-mode", "no", "--logfile", os.path.join(self.dir, "redis.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("redis-server did not answer PING within 20 s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def aof_bytes(self) -> int:
        total = 0
        for dirpath, _d, files in os.walk(self.dir):
            for f in files:
                if "aof" in f:
                    total += os.path.getsize(os.path.join(dirpath, f))
        return total

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(64)


def redis_benchmark(root: str, messages: int, size: int, pipeline: int = 64, clients: int = 50) -> dict:
    """XADD through redis-benchmark; msgs/s from its own CSV output."""
    if shutil.which("redis-benchmark") is None:
        return {"skipped": "redis-benchmark is not installed (apt-get install redis-tools)"}
    payload = "x" * size
    with RedisServer(root) as srv:
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(srv.port), "-n", str(messages), "-P", str(pipeline),
               "-c", str(clients), "-q", "--csv", "XADD", "s", "*", "f", payload]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        dt = time.perf_counter() - t0
        rps = None
        for row in csv.reader(io.StringIO(out.stdout)):
            if len(row) >= 2:
                try:
                    rps = float(row[1])
                except ValueError:
                    continue
        if rps is None:
            return {"error": f"could not read redis-benchmark output: {out.stdout[-300:]} {out.stderr[-300:]}"}
        shown = " ".join(cmd[:-1]) + f" <{size}-byte payload>"
        return {"msgs_per_s": rps, "mb_per_s": rps * size / 1e6, "seconds_wall": dt, "messages": messages,
                "aof_bytes": srv.aof_bytes(), "command": shown}


def redis_py(root: str, messages: int, size: int, pipeline: int = 64) -> dict:
    """XADD through redis-py, pipelines of ``pipeline`` commands, one connection."""
    try:
        import redis
    except ImportError:
        return {"skipped": "redis-py is not installed (pip install redis)"}
    payload = b"x" * size
    with RedisServer(root) as srv:
        r = redis.Redis(host="127.0.0.1", port=srv.port)
        try:
            left = messages
            t0 = time.perf_counter()
            while left > 0:
                k = min(pipeline, left)
                pipe = r.pipeline(transaction=False)
                for _ in range(k):
                    pipe.xadd("s", {"f": payload})
                pipe.execute()
                left -= k
            dt = time.perf_counter() - t0
            n = r.xlen("s")
        finally:
            r.close()
        return {"msgs_per_s": messages / dt, "mb_per_s": messages * size / dt / 1e6, "seconds": dt,
                "messages": messages, "stream_len": n, "aof_bytes": srv.aof_bytes(),
                "command": f"redis-py {redis.__version__}: pipeline(transaction=False) of {pipeline} xadd, one connection"}
