"""Shared fixtures: a real broker process, and the /dev/shm leak check;
and how the suite is spread over pytest-xdist workers.

tools/test.sh (and so CI) runs the suite in parallel: ``-n 3 --dist
loadgroup``.  Another test runs beside yours, on another worker, at any
time.  So a test (docs/testing.md, "What a test must do to be safe beside
others"):
- binds only free ports on 127.0.0.1 (``free_port()``), never a fixed one;
- writes only under ``tmp_path`` (or a temp dir it removes), never to a
  fixed path, the home directory or the repository;
- checks and cleans only its own broker's /dev/shm objects (``hpb.p<port>.*``)
  or its own pid-named ones, never every ``hpb.*``;
- stops processes by pid/process group, finds them by pid or port, never by name;
- uses names of its own (topics, groups, tables, znodes) on shared servers;
- waits on events with generous deadlines: two or three tests with brokers
  share the two cores, so steps take longer than alone.
Tests that share a module-scoped fixture run on one worker, in file order
(pytest_collection_modifyitems below); a module may also name its group:
``pytestmark = pytest.mark.xdist_group("name")``.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from brokerproc import PORTS_USED, BrokerProcess
from hpbroker.ring import is_stale, list_segments

SHM = "/dev/shm"


def _ours(name: str) -> bool:
    """Objects of the brokers this session started (instance p<port>).
    Other processes on the machine (a developer's broker) are not ours."""
    name = name.removeprefix("sem.")
    parts = name.split(".")
    return len(parts) >= 3 and parts[0] == "hpb" and parts[1].startswith("p") and parts[1][1:].isdigit() \
        and int(parts[1][1:]) in PORTS_USED


def _live_instances() -> set[str]:
    """Instances with a ring segment whose owner runs: a broker that is
    serving now.  In a parallel run another worker's broker may have been
    given a port this worker's brokers used before (hpb.p<port> is then its
    instance); its objects are not a leak of ours."""
    return {info["instance"] for info in list_segments() if info.get("valid") and not is_stale(info, 86_400_000)}


def _leaked() -> list[str]:
    live = _live_instances()
    return sorted(n for n in os.listdir(SHM) if _ours(n) and n.removeprefix("sem.").split(".")[1] not in live)


@pytest.fixture(scope="session", autouse=True)
def no_shm_leaks():
    """Every broker the suite started must leave nothing in /dev/shm (the
    ring tests check their own testring<pid> objects the same way)."""
    yield
    leaked = _leaked()
    if leaked:  # a broker of another worker may be creating its rings right now: look again
        time.sleep(2)
        leaked = _leaked()
    assert not leaked, f"shared-memory objects left behind by test brokers: {leaked}"


@pytest.fixture
def broker(tmp_path):
    """A standalone broker on a free loopback port, topics auto-created
    with 4 partitions; stopped (SIGTERM, then the process group killed) at
    the end of the test."""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a directory on a new tmpfs of that size (e.g. "2m"), for
    a real ENOSPC; skips the test where mounting is not permitted.  Every
    mount is undone at the end of the test."""
    mounts = []

    def mount(size: str):
        mnt = tmp_path / f"tmpfs{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounts.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounts:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


# Private PostgreSQL and ZooKeeper servers (tests/servers.py), session-scoped; the offset-store
# tests use them.  Importing the fixtures here registers them for every test module.
from servers import postgres_server, prometheus_server, zookeeper_server  # noqa: E402,F401


#: session-scoped servers that are slow to start (a JVM, initdb, Prometheus): the tests that use them run on one
#: xdist worker, so the suite starts each once rather than once per worker
SHARED_SERVERS = {"postgres_server", "zookeeper_server", "prometheus_server"}


#: modules of long broker-restarting tests (tens of seconds each), handed out first in a parallel
#: run; a module missing here only risks a longer tail, nothing else
LONG_MODULES = {"test_replication.py", "test_spill_producer.py", "test_tail.py", "test_bench_e2e.py",
                "test_idempotence.py", "test_client_failover.py", "test_groups_e2e.py", "test_bench_groups.py",
                "test_tx_crash.py", "test_transactions.py", "test_tx_replication.py", "test_sweeps.py",
                "test_sweep_kill_ingest.py", "test_text_protocol.py", "test_security.py", "test_shm_lifecycle.py",
                # the ZooKeeper tests form one group on one worker (shared-servers): start it early
                "test_cluster_e2e.py", "test_cluster_broker.py", "test_cluster_client.py", "test_cluster_stores.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks (tools/test.sh runs -n N --dist loadgroup)
def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (soaks, long crash loops) run only when asked
    for: ``-m slow``, or HPB_SLOW=1; ``tools/test-slow`` runs them all.

    Parallel runs (pytest-xdist, ``--dist loadgroup``): every test is its own
    unit of work, spread over the workers, except that
    - the tests of a module that has a module- or class-scoped fixture (a
      broker shared by the module, say) stay together on one worker, so that
      fixture starts once and they keep running one after the other;
    - the tests that use PostgreSQL or ZooKeeper (SHARED_SERVERS) stay together.
    A test (or module) can also name its own group with
    ``@pytest.mark.xdist_group("name")``; then this adds nothing to it."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        defs = getattr(item, "_fixtureinfo", None)
        defs = defs.name2fixturedefs if defs is not None else {}
        scopes = {name: fd[-1].scope for name, fd in defs.items() if fd}
        if any(sc in ("module", "class", "package") for sc in scopes.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
        elif SHARED_SERVERS & set(scopes):
            item.add_marker(pytest.mark.xdist_group("shared-servers"))

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # longest first: a worker that picks one of these last would keep the run waiting on it alone
        # (every worker sorts the same way, as xdist requires)
        items.sort(key=lambda item: 0 if item.nodeid.split("::")[0].rsplit("/", 1)[-1] in LONG_MODULES else 1)

    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("HPB_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow, HPB_SLOW=1 or tools/test-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
