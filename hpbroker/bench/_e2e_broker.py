"""The broker under test for ``hpbroker-bench`` (e2e): start, find its
processes, sample their CPU and memory, stop, and check it cleaned up.

The broker runs as ``python -m hpbroker serve`` in its own session on a
free loopback port, with its data in a temp dir; it is stopped by pid
(SIGTERM, then SIGKILL of its process group), never by name.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SHM = "/dev/shm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_objects(port: int) -> list[str]:
    """Shared-memory objects of the broker instance ``p<port>`` (rings, doorbells)."""
    try:
        names = os.listdir(SHM)
    except OSError:
        return []
    pre = f"hpb.p{port}."
    return sorted(n for n in names if n.removeprefix("sem.").startswith(pre))


class LocalBroker:
    """A private broker: ``python -m hpbroker serve`` in a temp dir under ``root``."""

    def __init__(self, root: str | None = None, serve_args: list[str] | None = None, curve: bool = False):
        """``curve``: with [security] curve on; its keys, ACL and the
        clients' keyword arguments (``client_kw``) are made in its temp dir."""
        self.root = tempfile.mkdtemp(prefix="hpbroker-bench-e2e-", dir=root or os.getcwd())
        self.data_dir = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "broker.log")
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.serve_args = list(serve_args or [])
        if "--http-port" not in self.serve_args:  # the HTTP port only when a bench asks for it
            self.serve_args += ["--http-port", "0"]
        self.client_kw: dict = {}
        if curve:
            from hpbroker.bench._e2e_curve import secure

            extra, self.client_kw = secure(self.root)
            self.serve_args += extra
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 60.0) -> "LocalBroker":
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "hpbroker", "serve", "--port", str(self.port), "--data-dir", self.data_dir,
               *self.serve_args]  # INFO log: "started writer0 (pid N)" names the children
        if "--text-port" not in self.serve_args:  # a free port was chosen for ZeroMQ only
            cmd += ["--text-port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import zmq

        from hpbroker.client.curve import client_curve
        from hpbroker.protocol import codec
        from hpbroker.protocol import messages as m

        curve = client_curve(**self.client_kw) if self.client_kw else None
        ctx = zmq.Context.instance()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode} during start:\n{self.log_tail()}")
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                curve.apply(s)
            s.connect(self.url)
            try:
                s.send_multipart(codec.encode_request(m.Metadata(id=1, topics=[])))
                if s.poll(500):
                    rep, _ = codec.decode_reply(s.recv_multipart())
                    if isinstance(rep, m.MetadataReply) and all(rep.acceptors):
                        return
            finally:
                s.close()
            time.sleep(0.1)
        raise RuntimeError(f"broker not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 6000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def processes(self) -> dict[str, psutil.Process]:
        """{role name: Process}: "supervisor", "writer0", "acceptor0", ...
        (from the supervisor's "started NAME (pid N)" log lines)."""
        out = {"supervisor": psutil.Process(self.proc.pid)}
        for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", self.log_tail(1 << 20)):
            try:
                out[name] = psutil.Process(int(pid))
            except psutil.NoSuchProcess:
                pass
        return out

    def bytes_on_disk(self) -> int:
        return dir_bytes(self.data_dir)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait (the broker drains and fsyncs); SIGKILL the
        process group if it hangs; then make sure no child outlives it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid)
                self.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            if time.monotonic() > deadline - 5:
                _killpg(self.proc.pid)
            time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def cleanup(self) -> list[str]:
        """Remove the temp dir; return (and unlink) any shared-memory object
        the broker left behind, so a bench run never leaks one."""
        left = shm_objects(self.port)
        for n in left:
            try:
                os.unlink(os.path.join(SHM, n))
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        return left


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


_TITLE = re.compile(r"hpbroker: (\S+) \(")


def remote_processes(url: str) -> dict[str, psutil.Process]:
    """The processes of a broker on this machine reached at ``url``: the
    process listening on its port is acceptor 0, its parent the supervisor.
    Each child names its role in its title (``hpbroker: writer0 (p9092)``,
    see :func:`hpbroker.procutil.run_child`); for a broker too old for that,
    children that listen on TCP count as acceptors and the others as
    writers.  {} when it cannot be found (another host, no permission)."""
    from urllib.parse import urlsplit

    try:
        port = urlsplit(url).port
        owner = None
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                owner = psutil.Process(c.pid)
                break
        if owner is None:
            return {}
        sup = owner.parent()
        out = {"supervisor": sup}
        na = nw = 0
        for ch in sorted(sup.children(), key=lambda p: p.create_time()):
            try:
                cmd = " ".join(ch.cmdline())
                if "resource_tracker" in cmd:
                    continue
                titled = _TITLE.match(cmd)
                if titled:
                    out[titled.group(1)] = ch
                    continue
                listens = any(c.status == psutil.CONN_LISTEN for c in ch.net_connections(kind="tcp"))
            except psutil.Error:
                continue
            if listens:
                out[f"acceptor{na}"] = ch
                na += 1
            else:
                out[f"writer{nw}"] = ch
                nw += 1
        return out
    except (psutil.Error, ValueError):
        return {}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (thread name, CPU seconds)} of process ``pid``, from /proc
    (``ZMQbg/IO/0``: a ZeroMQ I/O thread, where CURVE encrypts and decrypts)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return out


class CpuSampler:
    """CPU% of each process between :meth:`start` and :meth:`stop` (from
    their cpu_times), the same per thread name (:meth:`thread_percent`), and
    the peak RSS seen by :meth:`sample`."""

    def __init__(self, procs: dict[str, psutil.Process]):
        self.procs = procs
        self.t0 = self.t1 = 0.0
        self.c0: dict[str, float] = {}
        self.c1: dict[str, float] = {}
        self.th0: dict[str, dict] = {}
        self.th1: dict[str, dict] = {}  # each thread's last CPU seen: a worker's threads may end before stop()
        self.peak_rss: dict[str, int] = {}
        self.peak_total_rss = 0

    @staticmethod
    def _cpu(p: psutil.Process) -> float | None:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return None

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = {n: self._cpu(p) for n, p in self.procs.items()}
        self.th0 = {n: thread_cpu(p.pid) for n, p in self.procs.items()}
        self.th1 = {n: dict(v) for n, v in self.th0.items()}
        self.sample()

    def sample(self) -> None:
        for n, p in self.procs.items():
            self.th1.setdefault(n, {}).update(thread_cpu(p.pid))
        total = 0
        for n, p in self.procs.items():
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.peak_rss[n] = max(self.peak_rss.get(n, 0), rss)
        self.peak_total_rss = max(self.peak_total_rss, total)

    def stop(self) -> None:
        self.sample()
        self.t1 = time.perf_counter()
        self.c1 = {n: self._cpu(p) for n, p in self.procs.items()}
        for n, p in self.procs.items():
            self.th1.setdefault(n, {}).update(thread_cpu(p.pid))

    def cpu_percent(self) -> dict[str, float | None]:
        dt = max(self.t1 - self.t0, 1e-9)
        out = {}
        for n in self.procs:
            a, b = self.c0.get(n), self.c1.get(n)
            out[n] = None if a is None or b is None else round(100.0 * (b - a) / dt, 1)
        return out

    def thread_percent(self) -> dict[str, dict[str, float]]:
        """{process: {thread name: CPU%}} over the interval, threads of one
        name summed ("main" is the process's first thread, whatever its name)."""
        dt = max(self.t1 - self.t0, 1e-9)
        out = {}
        for n, p in self.procs.items():
            by: dict[str, float] = {}
            for tid, (name, cpu) in self.th1.get(n, {}).items():
                was = self.th0.get(n, {}).get(tid, (name, 0.0 if tid != p.pid else cpu))[1]
                key = "main" if tid == p.pid else name
                by[key] = by.get(key, 0.0) + 100.0 * (cpu - was) / dt
            out[n] = {k: round(v, 1) for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.5}
        return out

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}
