"""Private PostgreSQL, ZooKeeper and Prometheus servers for tests (no mocks).

Each server runs from a fresh temp dir on a free 127.0.0.1 port, as a child
of this process in its own session, and is stopped by its pid (then its
process group), never by name.  The temp dir is removed on stop; stop also
runs at interpreter exit, so a failing test or an interrupted session
leaves nothing behind.  A missing binary fails with one line naming the
Debian package to install (tools/debian-packages.txt lists both).

The fixtures ``postgres_server``, ``zookeeper_server`` and
``prometheus_server`` are session-scoped; tests/conftest.py registers them.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ports import free_port


class _Server:
    """A child process in its own session with a temp dir, stopped by pid."""

    name = "server"

    def __init__(self):
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None
        atexit.register(self.stop)

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _spawn(self, cmd: list[str], **kw) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=self.dir, **kw)

    def _wait_ready(self, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            try:
                ready()
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not accept connections within {timeout} s ({last}):\n{self.log_tail()}")

    def stop(self, signum: int = signal.SIGTERM, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signum)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        if proc is not None:
            # whatever is left of its session (postgres' backends, say): the group we created, by its id
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.stop)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PostgresServer(_Server):
    """``initdb`` + ``postgres`` in a temp dir, listening on 127.0.0.1 only,
    its unix socket in the temp dir, trust authentication, one database.
    Run as the ``postgres`` system user when we are root (postgres refuses
    to run as root)."""

    name = "PostgreSQL"
    database = "hpbroker_test"
    user = "postgres"

    def __init__(self):
        super().__init__()
        self.bindir = self.find_bindir()

    @staticmethod
    def find_bindir() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                       key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
        if not found or not os.access(Path(found[-1]).with_name("initdb"), os.X_OK):
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
                               "apt-get install postgresql")
        return Path(found[-1]).parent

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={self.database} connect_timeout=5"

    def connect(self, **kw):
        """A new psycopg connection to the test database."""
        import psycopg

        return psycopg.connect(self.dsn, **kw)

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        import psycopg  # before anything starts: a missing driver is one clear ImportError

        as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("no 'postgres' system user to run PostgreSQL as: apt-get install postgresql") from None
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise RuntimeError("setpriv not found (to run postgres as the postgres user): apt-get install util-linux")
            # setpriv execs, so the pid we hold is postgres' own
            as_user = [setpriv, f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups", "--"]
        # not under pytest's tmp_path: that is root-only (0700), and postgres must reach its data dir
        self.dir = Path(tempfile.mkdtemp(prefix="hpb-pg-"))
        try:
            data, sock = self.dir / "data", self.dir / "sock"
            sock.mkdir()
            if owner is not None:
                for p in (self.dir, sock):
                    os.chown(p, owner.pw_uid, owner.pw_gid)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
                   "HOME": str(self.dir), "TZ": "UTC"}
            r = subprocess.run(as_user + [str(self.bindir / "initdb"), "-D", str(data), "-U", self.user,
                                          "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                               cwd=self.dir, env=env, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout}{r.stderr}")
            self._spawn(as_user + [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port),
                                   "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}",
                                   "-c", "fsync=off", "-c", "max_connections=20", "-c", "shared_buffers=16MB",
                                   # two-phase commit (tests/test_tx_xa_postgres.py): PREPARE TRANSACTION
                                   "-c", "max_prepared_transactions=10"],
                        env=env)

            def ready():
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres "
                                     "connect_timeout=2", autocommit=True) as c:
                    c.execute(f"CREATE DATABASE {self.database}")

            self._wait_ready(ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, signum: int = signal.SIGINT, grace: float = 10.0) -> None:
        # SIGINT: postgres' "fast" shutdown (roll back sessions, stop now)
        super().stop(signum, grace)


class ZooKeeperServer(_Server):
    """A standalone ZooKeeper (Debian's jars) with its data in a temp dir,
    listening on 127.0.0.1 only, no admin server, four-letter words off."""

    name = "ZooKeeper"
    jar = Path("/usr/share/java/zookeeper.jar")  # its manifest's Class-Path names the other jars

    def __init__(self):
        super().__init__()
        self.java = shutil.which("java")
        if not self.jar.exists():
            raise RuntimeError(f"{self.jar} not found: apt-get install zookeeper")
        if self.java is None:
            raise RuntimeError("java not found: apt-get install zookeeper (it brings a JRE)")

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 10.0):
        """A started kazoo client (the caller stops it)."""
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=self.hosts, timeout=timeout)
        zk.start(timeout=timeout)
        return zk

    def start(self, timeout: float = 60.0) -> "ZooKeeperServer":
        from kazoo.client import KazooClient  # a missing client library is one clear ImportError

        self.dir = Path(tempfile.mkdtemp(prefix="hpb-zk-"))
        try:
            (self.dir / "data").mkdir()
            cfg = self.dir / "zoo.cfg"
            cfg.write_text(f"tickTime=500\ninitLimit=10\nsyncLimit=5\n"
                           f"dataDir={self.dir / 'data'}\n"
                           f"clientPort={self.port}\nclientPortAddress=127.0.0.1\n"
                           "admin.enableServer=false\n4lw.commands.whitelist=ruok\n"
                           "maxClientCnxns=0\nforceSync=no\n")
            self._spawn([self.java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                         "-Dzookeeper.admin.enableServer=false", "-Dzookeeper.jmx.log4j.disable=true",
                         "-cp", str(self.jar), "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)])

            def ready():
                zk = KazooClient(hosts=self.hosts, timeout=2.0)
                try:
                    zk.start(timeout=2.0)
                finally:
                    zk.stop()
                    zk.close()

            self._wait_ready(ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self


class PrometheusServer(_Server):
    """Debian's ``prometheus`` on 127.0.0.1 with its TSDB in a temp dir,
    scraping every second whatever :meth:`set_targets` names (a file_sd
    file it watches), so one server serves the whole session."""

    name = "Prometheus"

    def __init__(self):
        super().__init__()
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise RuntimeError("prometheus not found: apt-get install prometheus")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_targets(self, targets: list[str]) -> None:
        """Scrape ``targets`` ("127.0.0.1:PORT", path /metrics) from now on."""
        import json

        tmp = self.dir / "targets.json.tmp"
        tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]))
        os.replace(tmp, self.dir / "targets.json")

    def query(self, expr: str) -> list[dict]:
        """The result vector of an instant query (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        import json
        import urllib.parse
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {expr!r} failed: {body}")
        return body["data"]["result"]

    def active_targets(self) -> list[dict]:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as r:
            return json.load(r)["data"]["activeTargets"]

    def start(self, timeout: float = 60.0) -> "PrometheusServer":
        import urllib.request

        self.dir = Path(tempfile.mkdtemp(prefix="hpb-prom-"))
        try:
            self.set_targets([])
            cfg = self.dir / "prometheus.yml"
            cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
                           "scrape_configs:\n  - job_name: hpbroker\n    file_sd_configs:\n"
                           f"      - files: ['{self.dir / 'targets.json'}']\n        refresh_interval: 1s\n")
            self._spawn([self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
                         f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                         "--log.level=warn"])

            def ready():
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status != 200:
                        raise RuntimeError(f"status {r.status}")

            self._wait_ready(ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self


def _started(cls):
    """cls() started, or the test failed with one line saying why (a missing
    package names the Debian package to install)."""
    try:
        server = cls()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    return server.start()


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL for the session (see PostgresServer)."""
    server = _started(PostgresServer)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def zookeeper_server():
    """A private ZooKeeper for the session (see ZooKeeperServer)."""
    server = _started(ZooKeeperServer)
    try:
        yield server
    finally:
        server.stop()


def own_zookeeper():
    """A ZooKeeper of a module's own (``yield from`` it in a module-scoped
    ``zookeeper_server`` fixture): the module's tests then form a group of
    their own and run beside other modules on another worker, instead of
    in the one shared-servers group (the cluster tests are minutes long)."""
    server = _started(ZooKeeperServer)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus_server():
    """A private Prometheus for the session (see PrometheusServer)."""
    server = _started(PrometheusServer)
    try:
        yield server
    finally:
        server.stop()
