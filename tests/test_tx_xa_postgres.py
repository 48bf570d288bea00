"""XA with a real PostgreSQL: examples/xa_postgres.py, run as a user would,
commits an order row and its message both or neither; and when the
coordinator is killed (-9) after both branches prepared, both servers list
the XID in tpc_recover(), and recovery gives the same outcome on both."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from hpbroker import Producer
from rawclient import RawClient

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "xa_postgres.py"
FORMAT_ID = 4242  # the example's
PARTITIONS = 4  # the broker fixture's


@pytest.fixture
def xa(broker, postgres_server, tmp_path, request):
    """Run the example against this test's broker, database and decision log."""
    topic = f"xa-{request.node.name[:40].replace('[', '-').replace(']', '')}"
    cmd = [sys.executable, str(EXAMPLE), "--broker", broker.url, "--dsn", postgres_server.dsn,
           "--log", str(tmp_path / "decisions.log"), "--topic", topic]
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    class Xa:
        def run(self, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120, env=env)

        def paused(self, *args: str) -> tuple[subprocess.Popen, str]:
            """Start an order that stops at --pause-after; -> (process, its gtrid)."""
            proc = subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=env, start_new_session=True)
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            line = proc.stdout.readline() if ready else ""
            if not line.startswith("paused after"):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"the coordinator did not pause: {line}{proc.stdout.read()}")
            return proc, line.split(": ", 1)[1].strip()

        def messages(self) -> list[bytes]:
            c = RawClient(broker.url)
            try:
                out = []
                for p in range(PARTITIONS):
                    rep, _ = c.fetch(topic, p, 0)
                    if rep.code == 0:
                        out += [r.value for r in c.fetch_all(topic, p)]
                return sorted(out)
            finally:
                c.close()

        def rows(self, *ids: int) -> dict[int, str]:
            with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
                cur = conn.execute("SELECT id, item FROM xa_orders WHERE id = ANY(%s)", (list(ids),))
                return dict(cur.fetchall())

        def in_doubt(self) -> tuple[set[str], set[str]]:
            """gtrids of the example's prepared branches: (PostgreSQL's, hpbroker's)."""
            with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
                pg = {x.gtrid for x in conn.tpc_recover() if x.format_id == FORMAT_ID}
            with Producer(broker.url) as p:
                mq = {x.gtrid for x in p.tpc_recover() if x.format_id == FORMAT_ID and x.bqual == "hpbroker"}
            return pg, mq

    return Xa()


def test_an_order_commits_on_both_or_neither(xa):
    r = xa.run("order", "101", "two coffees")
    assert r.returncode == 0 and r.stdout.startswith("committed order-101-"), r.stdout + r.stderr
    assert xa.rows(101) == {101: "two coffees"}
    assert xa.messages() == [b"order 101: two coffees"]
    # the same id again: the INSERT fails after the message joined the branch; both roll back
    r = xa.run("order", "101", "again")
    assert r.returncode == 1 and r.stdout.startswith("rolled back order-101-"), r.stdout + r.stderr
    assert "UniqueViolation" in r.stdout
    assert xa.rows(101) == {101: "two coffees"}
    assert xa.messages() == [b"order 101: two coffees"]
    assert xa.in_doubt() == (set(), set())


def test_a_coordinator_killed_after_both_prepared_is_recovered_the_same_on_both(xa):
    seen: list[bytes] = []
    # killed before it wrote its decision: presumed abort; after: commit
    for oid, pause, outcome in ((201, "prepare", "rolled back"), (202, "decision", "committed")):
        proc, gtrid = xa.paused("order", str(oid), "tea", "--pause-after", pause)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        # both branches wait, prepared, with the coordinator gone; nothing visible yet
        assert xa.in_doubt() == ({gtrid}, {gtrid})
        assert xa.rows(oid) == {} and xa.messages() == seen
        r = xa.run("recover")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout == f"{outcome} {gtrid} (hpbroker and postgres)\n"
        assert xa.in_doubt() == (set(), set())
        if outcome == "committed":
            seen.append(f"order {oid}: tea".encode())
            assert xa.rows(oid) == {oid: "tea"}
        else:
            assert xa.rows(oid) == {}
        assert xa.messages() == seen
