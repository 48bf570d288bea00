"""Consumer-group offset stores (hpbroker.client.stores), against real backends.

Every store is exercised the same way (commit, close, a NEW store on the
same data loads it back), then each one's own promises: the file's atomic
write, its lock between processes and what a corrupt or torn file does;
SQL's transaction and upsert fallback on SQLite and a private PostgreSQL;
MetaQ's znode layout on a private ZooKeeper (tests/servers.py); and
unreachable servers failing within a bounded time.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from hpbroker.client.stores import (
    DEFAULT_FILE_PATH,
    FileOffsetStore,
    OffsetStore,
    OffsetStoreError,
    SqlOffsetStore,
    ZooKeeperOffsetStore,
    resolve_store,
)
from hpbroker.client.stores.sql import render
from servers import free_port

# The PostgreSQL/ZooKeeper tests run on one xdist worker, so each server starts once a run
# (tests/conftest.py: SHARED_SERVERS; they are requested through getfixturevalue here).
pytestmark = pytest.mark.xdist_group("shared-servers")

ROOT = Path(__file__).resolve().parent.parent


class DictStore:
    """A custom store, built by resolve_store("<this module>:DictStore", name=...).
    Its data outlives the instance (class-level), as a real backend's would."""

    data: dict[str, dict[str, dict[tuple[str, int], int]]] = {}

    def __init__(self, name: str = "default"):
        self.name = name
        self.closed = False

    def load(self, group, partitions):
        have = DictStore.data.get(self.name, {}).get(group, {})
        return {tp: have[tp] for tp in partitions if tp in have}

    def commit(self, group, offsets):
        DictStore.data.setdefault(self.name, {}).setdefault(group, {}).update(offsets)

    def close(self):
        self.closed = True


def uid() -> str:
    return uuid.uuid4().hex[:12]


# -- every store -------------------------------------------------------------------------------

KINDS = ["file", "sqlite", "postgres", "zookeeper", "custom"]


@pytest.fixture(params=KINDS)
def open_store(request, tmp_path):
    """open_store() -> a NEW store over the same data each call (for PostgreSQL
    and ZooKeeper, a new connection); all closed at the end of the test."""
    kind, name = request.param, uid()
    if kind == "file":
        def make(): return FileOffsetStore(tmp_path / "offsets.json")
    elif kind == "sqlite":
        def make(): return SqlOffsetStore(sqlite3.connect(tmp_path / "offsets.db"))
    elif kind == "postgres":
        pg = request.getfixturevalue("postgres_server")

        def make(): return SqlOffsetStore(pg.connect, table=f"offsets_{name}")
    elif kind == "zookeeper":
        zk = request.getfixturevalue("zookeeper_server")

        def make(): return ZooKeeperOffsetStore(zk.hosts, root=f"/test-{name}/meta")
    else:
        def make(): return resolve_store(f"{__name__}:DictStore", name=name)
    opened = []

    def open_():
        store = make()
        opened.append(store)
        return store

    open_.kind = kind
    yield open_
    for store in opened:
        store.close()


def test_committed_offsets_come_back_from_a_new_store(open_store):
    first = open_store()
    assert isinstance(first, OffsetStore)
    first.commit("g", {("t", 0): 10, ("t", 3): 42, ("u", 1): 0})
    first.close()

    again = open_store()
    wanted = [("t", 0), ("t", 1), ("t", 3), ("u", 1), ("v", 0)]
    assert again.load("g", wanted) == {("t", 0): 10, ("t", 3): 42, ("u", 1): 0}  # the others: never committed
    assert again.load("other-group", wanted) == {}
    assert again.load("g", []) == {}


def test_a_commit_changes_only_its_own_partitions(open_store):
    store = open_store()
    store.commit("g", {("t", 0): 1, ("t", 1): 1})
    store.commit("g", {("t", 1): 5})
    store.commit("g", {("t", 1): 7})
    assert open_store().load("g", [("t", 0), ("t", 1)]) == {("t", 0): 1, ("t", 1): 7}


def test_two_groups_do_not_clobber_each_other(open_store):
    a, b = open_store(), open_store()  # two stores open at once over the same data
    a.commit("g1", {("t", 0): 5})
    b.commit("g2", {("t", 0): 9})
    a.commit("g1", {("t", 1): 6})
    b.commit("g2", {("t", 0): 11})
    check = open_store()
    assert check.load("g1", [("t", 0), ("t", 1)]) == {("t", 0): 5, ("t", 1): 6}
    assert check.load("g2", [("t", 0), ("t", 1)]) == {("t", 0): 11}


@pytest.mark.parametrize("bad", [{("t", 0): -1}, {("t", -1): 3}, {("t", 0): "3"}, {("t", 0): True},
                                 {("", 0): 3}, {"t": 3}])
def test_a_bad_offset_is_a_value_error_and_nothing_is_written(open_store, bad):
    if open_store.kind == "custom":
        pytest.skip("a custom store checks what it likes")
    store = open_store()
    store.commit("g", {("t", 0): 1})
    with pytest.raises(ValueError):
        store.commit("g", {("t", 1): 2, **bad})
    with pytest.raises(ValueError):
        store.commit("", {("t", 0): 2})
    assert open_store().load("g", [("t", 0), ("t", 1)]) == {("t", 0): 1}


# -- FileOffsetStore ---------------------------------------------------------------------------------

def test_the_file_is_metaq_style_json(tmp_path):
    path = tmp_path / "sub" / "offsets.json"  # the directory is made on the first commit
    store = FileOffsetStore(path)
    store.commit("g", {("t", 0): 5, ("t", 12): 7})
    store.commit("h", {("u", 1): 0})
    assert json.loads(path.read_text()) == {"version": 1, "groups": {"g": {"t": {"0": 5, "12": 7}},
                                                                     "h": {"u": {"1": 0}}}}
    assert not Path(str(path) + ".tmp").exists()
    assert Path(str(path) + ".lock").exists()


def test_the_default_path_is_under_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert DEFAULT_FILE_PATH == os.path.join("~", ".hpbroker", "offsets.json")
    store = resolve_store("file")
    assert isinstance(store, FileOffsetStore)
    store.commit("g", {("t", 0): 3})
    assert json.loads((tmp_path / ".hpbroker" / "offsets.json").read_text())["groups"] == {"g": {"t": {"0": 3}}}


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'{"version": 2, "groups": {}}',
                                     b'{"version": 1, "groups": {"g": {"t": {"0": "five"}}}}'])
def test_a_corrupt_file_is_an_error_naming_it_and_is_not_overwritten(tmp_path, content):
    path = tmp_path / "offsets.json"
    path.write_bytes(content)
    store = FileOffsetStore(path)
    with pytest.raises(OffsetStoreError, match=str(path)):
        store.load("g", [("t", 0)])
    with pytest.raises(OffsetStoreError, match=str(path)):
        store.commit("g", {("t", 0): 1})
    assert path.read_bytes() == content  # still there for a human to look at


def test_an_unreadable_file_is_an_error(tmp_path):
    path = tmp_path / "offsets.json"
    path.mkdir()  # EISDIR: unreadable even for root
    with pytest.raises(OffsetStoreError, match=str(path)):
        FileOffsetStore(path).load("g", [("t", 0)])


def test_a_torn_tmp_file_left_by_a_crash_is_ignored(tmp_path):
    path = tmp_path / "offsets.json"
    FileOffsetStore(path).commit("g", {("t", 0): 5})
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(b'{"version": 1, "groups": {"g": {"t": {"0": 9')  # a commit that died mid-write
    store = FileOffsetStore(path)
    assert store.load("g", [("t", 0)]) == {("t", 0): 5}
    store.commit("g", {("t", 1): 6})
    assert FileOffsetStore(path).load("g", [("t", 0), ("t", 1)]) == {("t", 0): 5, ("t", 1): 6}
    assert not tmp.exists()


def test_a_commit_waits_for_the_lock_another_process_holds(tmp_path):
    path = tmp_path / "offsets.json"
    store = FileOffsetStore(path)
    store.commit("g", {("t", 0): 1})
    fd = os.open(str(path) + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # an open file description of its own: flock excludes it like another process
    done = threading.Event()
    t = threading.Thread(target=lambda: (store.commit("g", {("t", 0): 2}), done.set()))
    t.start()
    try:
        assert not done.wait(0.5), "the commit went ahead while another holder had the lock"
        assert FileOffsetStore(path).load("g", [("t", 0)]) == {("t", 0): 1}
    finally:
        os.close(fd)
        t.join(10)
    assert done.is_set()
    assert FileOffsetStore(path).load("g", [("t", 0)]) == {("t", 0): 2}


WORKER = r"""
import os, sys, time
from hpbroker.client.stores import FileOffsetStore
path, group, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
store = FileOffsetStore(path)
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(n):
    store.commit(group, {("t", i % 4): i + 1})
"""


def test_two_processes_committing_different_groups_to_one_file_keep_both(tmp_path):
    path, go, n = tmp_path / "offsets.json", tmp_path / "go", 120
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), group, str(n), str(go)], env=env)
             for group in ("a", "b")]
    try:
        time.sleep(0.3)  # both started and waiting
        go.touch()
        assert [p.wait(60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    last = {("t", k): n - 4 + k + 1 for k in range(4)}  # the last i with i % 4 == k, plus one
    store = FileOffsetStore(path)
    parts = [("t", k) for k in range(4)]
    assert store.load("a", parts) == last
    assert store.load("b", parts) == last


def test_a_closed_file_store_refuses_work(tmp_path):
    store = FileOffsetStore(tmp_path / "offsets.json")
    store.close()
    store.close()
    with pytest.raises(OffsetStoreError, match="closed"):
        store.commit("g", {("t", 0): 1})


# -- SqlOffsetStore: SQLite and PostgreSQL -----------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def sql_db(request, tmp_path):
    """(connect, kind): connect() -> a new DB-API connection to one database."""
    if request.param == "sqlite":
        return (lambda: sqlite3.connect(tmp_path / "offsets.db")), "sqlite"
    pg = request.getfixturevalue("postgres_server")
    return pg.connect, "postgres"


def _rows(connect, table):
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT group_id, topic, partition_id, next_offset, updated_at FROM {table} "
                    "ORDER BY group_id, topic, partition_id")
        return cur.fetchall()
    finally:
        conn.close()


def test_sql_table_layout(sql_db):
    connect, _ = sql_db
    table = f"offsets_{uid()}"
    store = SqlOffsetStore(connect(), table=table)
    store.commit("g", {("t", 1): 7, ("t", 0): 5})
    store.commit("g", {("t", 0): 6})
    store.close()
    rows = _rows(connect, table)
    assert [r[:4] for r in rows] == [("g", "t", 0, 6), ("g", "t", 1, 7)]
    assert all(r[4] is not None for r in rows)  # updated_at


def test_a_sql_commit_is_all_or_nothing(sql_db):
    connect, _ = sql_db
    table = f"offsets_{uid()}"
    conn = connect()
    conn.cursor().execute(f"CREATE TABLE {table} (group_id VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL, "
                          "partition_id INTEGER NOT NULL, next_offset BIGINT NOT NULL CHECK (next_offset < 1000), "
                          "updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
                          "PRIMARY KEY (group_id, topic, partition_id))")
    conn.commit()
    conn.close()
    store = SqlOffsetStore(connect, table=table)
    store.commit("g", {("t", 0): 1, ("t", 1): 1})
    with pytest.raises(OffsetStoreError, match=table):
        store.commit("g", {("t", 0): 2, ("t", 1): 5000, ("t", 2): 3})  # the second row breaks the CHECK
    assert SqlOffsetStore(connect(), table=table).load("g", [("t", k) for k in range(3)]) == {("t", 0): 1, ("t", 1): 1}
    store.commit("g", {("t", 0): 3})  # and the store goes on working
    assert SqlOffsetStore(connect(), table=table).load("g", [("t", 0)]) == {("t", 0): 3}
    store.close()


def test_sql_falls_back_to_update_then_insert_where_on_conflict_fails(sql_db):
    """A table without the primary key (made by hand, say): ON CONFLICT has
    nothing to match, so the store updates, and inserts only what is new."""
    connect, _ = sql_db
    table = f"offsets_{uid()}"
    conn = connect()
    conn.cursor().execute(f"CREATE TABLE {table} (group_id VARCHAR(255), topic VARCHAR(255), partition_id INTEGER, "
                          "next_offset BIGINT, updated_at TIMESTAMP)")
    conn.commit()
    conn.close()
    store = SqlOffsetStore(connect, table=table)
    store.commit("g", {("t", 0): 1, ("t", 1): 1})
    store.commit("g", {("t", 0): 2, ("t", 2): 9})
    store.commit("g", {("t", 0): 2})  # the same value again: still one row
    store.close()
    assert [r[:4] for r in _rows(connect, table)] == [("g", "t", 0, 2), ("g", "t", 1, 1), ("g", "t", 2, 9)]


@pytest.mark.parametrize("style", ["qmark", "named", "format", "pyformat", "numeric"])
def test_render_gives_each_paramstyle_its_placeholders(style):
    sql, args = render("SELECT a FROM t WHERE b = {} AND c = {}", ("x", 3), style)
    expect = {"qmark": ("?", "?"), "named": (":p0", ":p1"), "format": ("%s", "%s"),
              "pyformat": ("%(p0)s", "%(p1)s"), "numeric": (":1", ":2")}[style]
    assert sql == f"SELECT a FROM t WHERE b = {expect[0]} AND c = {expect[1]}"
    assert args == ({"p0": "x", "p1": 3} if style in ("named", "pyformat") else ("x", 3))


@pytest.mark.parametrize("db,style", [("sqlite", None), ("sqlite", "named"), ("sqlite", "numeric"),
                                      ("postgres", None), ("postgres", "format")])
def test_sql_paramstyles_against_real_drivers(db, style, tmp_path, request):
    if db == "sqlite":
        def connect(): return sqlite3.connect(tmp_path / "o.db")
    else:
        connect = request.getfixturevalue("postgres_server").connect
    table = f"offsets_{uid()}"
    store = SqlOffsetStore(connect, table=table, paramstyle=style)
    store.commit("g", {("t", 0): 4, ("t", 1): 5})
    store.commit("g", {("t", 1): 6})
    assert SqlOffsetStore(connect(), table=table).load("g", [("t", 0), ("t", 1)]) == {("t", 0): 4, ("t", 1): 6}


def test_sql_table_names_are_checked(tmp_path):
    conn = sqlite3.connect(tmp_path / "o.db")
    for bad in ("x; DROP TABLE y", "a b", "1abc", "", "a.b.c", 'x"'):
        with pytest.raises(ValueError, match="identifier"):
            SqlOffsetStore(conn, table=bad)
    SqlOffsetStore(conn, table="main.offsets").commit("g", {("t", 0): 1})  # schema-qualified is fine


def test_sql_reconnects_after_the_server_drops_the_connection(postgres_server):
    table = f"offsets_{uid()}"
    made = []

    def connect():
        made.append(postgres_server.connect())
        return made[-1]

    store = SqlOffsetStore(connect, table=table)
    store.commit("g", {("t", 0): 1})
    with postgres_server.connect(autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (made[0].info.backend_pid,))
    with pytest.raises(OffsetStoreError, match=table):
        store.commit("g", {("t", 0): 2})
    store.commit("g", {("t", 0): 3})  # a new connection
    assert len(made) == 2 and made[0].closed
    assert store.load("g", [("t", 0)]) == {("t", 0): 3}
    store.close()
    assert made[1].closed


def test_an_unreachable_postgres_is_an_offset_store_error_soon():
    import psycopg

    port = free_port()  # nothing listens there
    store = SqlOffsetStore(lambda: psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=x connect_timeout=3"))
    started = time.monotonic()
    with pytest.raises(OffsetStoreError, match=f"cannot connect.*{port}"):
        store.load("g", [("t", 0)])
    with pytest.raises(OffsetStoreError):
        store.commit("g", {("t", 0): 1})
    assert time.monotonic() - started < 10


# -- ZooKeeperOffsetStore ------------------------------------------------------------------------

@pytest.fixture
def zk_client(zookeeper_server):
    zk = zookeeper_server.client()
    yield zk
    zk.stop()
    zk.close()


def test_zookeeper_nodes_are_metaqs_layout(zookeeper_server, zk_client):
    group = f"g-{uid()}"
    store = ZooKeeperOffsetStore(zookeeper_server.hosts)  # MetaQ's defaults: /meta, broker 0
    store.commit(group, {("orders", 3): 42, ("orders", 0): 0, ("audit", 1): 7})
    store.close()
    base = f"/meta/consumers/{group}/offsets"
    assert sorted(zk_client.get_children(base)) == ["audit", "orders"]
    assert sorted(zk_client.get_children(f"{base}/orders")) == ["0-0", "0-3"]
    assert zk_client.get(f"{base}/orders/0-3")[0] == b"-1-42"
    assert zk_client.get(f"{base}/orders/0-0")[0] == b"-1-0"
    assert zk_client.get(f"{base}/audit/0-1")[0] == b"-1-7"

    other_broker = ZooKeeperOffsetStore(zookeeper_server.hosts, root="/meta/", broker_id=2)
    other_broker.commit(group, {("orders", 3): 50})
    assert zk_client.get(f"{base}/orders/2-3")[0] == b"-1-50"
    assert other_broker.load(group, [("orders", 3), ("orders", 0)]) == {("orders", 3): 50}  # its own nodes only
    other_broker.close()


def test_zookeeper_reads_offsets_metaq_wrote(zookeeper_server, zk_client):
    base = f"/meta/consumers/g-{uid()}/offsets/t"
    zk_client.create(f"{base}/0-1", b"1234-77", makepath=True)  # msgId-offset
    zk_client.create(f"{base}/0-2", b"88")  # plain offset
    zk_client.create(f"{base}/0-3", b"not an offset")
    store = ZooKeeperOffsetStore(zookeeper_server.hosts)
    group = base.split("/")[3]
    assert store.load(group, [("t", 0), ("t", 1), ("t", 2)]) == {("t", 1): 77, ("t", 2): 88}
    with pytest.raises(OffsetStoreError, match=f"{base}/0-3"):
        store.load(group, [("t", 3)])
    store.close()


def test_a_zookeeper_commit_is_one_transaction(zookeeper_server, zk_client):
    from kazoo.security import make_acl

    root, group = f"/test-{uid()}", "g"
    store = ZooKeeperOffsetStore(zookeeper_server.hosts, root=root)
    store.commit(group, {("t", 0): 5})
    # partition 2's node exists and may be read but not written: the transaction must fail as a whole
    zk_client.create(store.node_path(group, "t", 2), b"-1-1", acl=[make_acl("world", "anyone", read=True)])
    with pytest.raises(OffsetStoreError, match="rolled back"):
        store.commit(group, {("t", 0): 6, ("t", 1): 6, ("t", 2): 6})
    check = ZooKeeperOffsetStore(zookeeper_server.hosts, root=root)
    assert check.load(group, [("t", 0), ("t", 1), ("t", 2)]) == {("t", 0): 5, ("t", 2): 1}
    assert zk_client.exists(store.node_path(group, "t", 1)) is None  # its create was rolled back too
    store.commit(group, {("t", 0): 7, ("t", 1): 7})
    assert check.load(group, [("t", 0), ("t", 1)]) == {("t", 0): 7, ("t", 1): 7}
    store.close()
    check.close()


def test_zookeeper_names_with_a_slash_are_refused(zookeeper_server):
    store = ZooKeeperOffsetStore(zookeeper_server.hosts, root=f"/test-{uid()}")
    with pytest.raises(ValueError):
        store.commit("a/b", {("t", 0): 1})
    with pytest.raises(ValueError):
        store.load("g", [("..", 0)])
    store.close()


def test_an_unreachable_zookeeper_is_an_offset_store_error_within_the_timeout():
    hosts = f"127.0.0.1:{free_port()}"  # nothing listens there
    store = ZooKeeperOffsetStore(hosts, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(OffsetStoreError, match=hosts):
        store.load("g", [("t", 0)])
    assert time.monotonic() - started < 6
    store.close()


def test_the_stores_import_without_kazoo():
    code = ("import sys; sys.modules['kazoo'] = None\n"
            "from hpbroker.client.stores import ZooKeeperOffsetStore, OffsetStoreError\n"
            "s = ZooKeeperOffsetStore('127.0.0.1:1')\n"
            "try:\n    s.load('g', [('t', 0)])\nexcept OffsetStoreError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "needs kazoo" in out.stdout and "hpbroker[offsets]" in out.stdout


# -- resolve_store -----------------------------------------------------------------------------------

def test_resolve_store_builds_each_kind(tmp_path):
    assert resolve_store("broker") is None
    assert resolve_store("broker", path=None, connection=None, hosts=None) is None  # a consumer passes them all
    f = resolve_store("file", path=str(tmp_path / "o.json"), connection=None, hosts=None)
    assert isinstance(f, FileOffsetStore) and f.path == tmp_path / "o.json"
    conn = sqlite3.connect(tmp_path / "o.db")
    s = resolve_store("sql", connection=conn, table="my_offsets")
    assert isinstance(s, SqlOffsetStore) and s.table == "my_offsets"
    z = resolve_store("zookeeper", hosts="127.0.0.1:1", root="/x", broker_id=3, timeout_s=2)
    assert isinstance(z, ZooKeeperOffsetStore)  # connects on first use, not here
    assert (z.hosts, z.root, z.broker_id, z.timeout_s) == ("127.0.0.1:1", "/x", 3, 2.0)
    custom = DictStore("x")
    assert resolve_store(custom) is custom
    built = resolve_store(f"{__name__}:DictStore", name="y")
    assert isinstance(built, DictStore) and built.name == "y"


@pytest.mark.parametrize("spec,options,message", [
    ("sql", {}, "needs a connection"),
    ("zookeeper", {}, "needs hosts"),
    ("file", {"hosts": "h:1"}, "takes no option hosts"),
    ("redis", {}, "offset_store must be 'broker', 'file', 'sql', 'zookeeper', a 'module:Class'"),
    (42, {}, "offset_store must be"),
    ("no_such_module_xyz:Store", {}, "cannot import"),
    (f"{__name__}:NoSuchClass", {}, "cannot import"),
    (f"{__name__}:uid", {}, "no load/commit/close"),
])
def test_resolve_store_refuses_with_one_clear_line(spec, options, message):
    with pytest.raises(ValueError, match=message) as e:
        resolve_store(spec, **options)
    assert "\n" not in str(e.value)
