"""``SqlOffsetStore``: offsets in a database table (MetaQ's database offset storage).

Any DB-API 2 driver: ``sqlite3``, ``psycopg`` (3), ``psycopg2``, MySQL
drivers...  The table (created when absent)::

    CREATE TABLE hpbroker_consumer_offsets (
        group_id     VARCHAR(255) NOT NULL,
        topic        VARCHAR(255) NOT NULL,
        partition_id INTEGER      NOT NULL,   -- "partition" is reserved in MySQL
        next_offset  BIGINT       NOT NULL,   -- "offset" is reserved in PostgreSQL
        updated_at   TIMESTAMP    DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (group_id, topic, partition_id))

A commit writes every row in one transaction and commits it (all or
nothing; rolled back on any error).  Rows are upserted with ``INSERT ... ON
CONFLICT (...) DO UPDATE`` (PostgreSQL >= 9.5, SQLite >= 3.24); where that
syntax fails the store falls back, for good, to UPDATE and then INSERT when
no row was there.  The connection must not be in autocommit mode, or a
commit of several partitions is no longer all or nothing.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Any, Callable, Iterable, Mapping

from hpbroker.client.stores.base import (
    OffsetStoreError,
    TopicPartition,
    check_group,
    check_offsets,
    check_partitions,
)

DEFAULT_TABLE = "hpbroker_consumer_offsets"

PARAMSTYLES = ("qmark", "numeric", "named", "format", "pyformat")

# a table name, optionally schema-qualified; it is put into SQL as is
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")


def paramstyle_of(connection) -> str:
    """The DB-API ``paramstyle`` of the driver *connection* comes from: the
    first module on the way from its class's module up to the top-level
    package that declares one (``psycopg.Connection`` -> ``psycopg``)."""
    module = type(connection).__module__ or ""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        style = getattr(sys.modules.get(".".join(parts[:i])), "paramstyle", None)
        if style in PARAMSTYLES:
            return style
    raise ValueError(f"cannot tell the paramstyle of a {module}.{type(connection).__name__} connection; "
                     f"pass paramstyle= (one of {', '.join(PARAMSTYLES)})")


def render(sql: str, params: tuple, style: str) -> tuple[str, Any]:
    """*sql* with each ``{}`` replaced by *style*'s placeholder, and *params*
    in the shape that style takes (a tuple, or a dict for named/pyformat)."""
    n = sql.count("{}")
    if n != len(params):
        raise AssertionError(f"{n} placeholders, {len(params)} parameters")
    if style == "qmark":
        marks = ["?"] * n
    elif style == "format":
        marks = ["%s"] * n
    elif style == "numeric":
        marks = [f":{i + 1}" for i in range(n)]
    elif style == "named":
        marks = [f":p{i}" for i in range(n)]
    elif style == "pyformat":
        marks = [f"%(p{i})s" for i in range(n)]
    else:
        raise ValueError(f"unknown paramstyle {style!r}; one of {', '.join(PARAMSTYLES)}")
    text = sql.format(*marks)
    if style in ("named", "pyformat"):
        return text, {f"p{i}": v for i, v in enumerate(params)}
    return text, tuple(params)


class SqlOffsetStore:
    """*connection*: a DB-API 2 connection, or a callable taking no arguments
    that returns one.  A callable is called on first use, and again after a
    failure (the broken connection is closed), so a database restart costs
    one failed commit.  A connection given directly is used as is and never
    closed except by :meth:`close`."""

    def __init__(self, connection, table: str = DEFAULT_TABLE, *, paramstyle: str | None = None):
        if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table):
            raise ValueError(f"table name {table!r} is not a plain SQL identifier "
                             "(letters, digits, _; optionally schema.table)")
        if paramstyle is not None and paramstyle not in PARAMSTYLES:
            raise ValueError(f"paramstyle {paramstyle!r}: one of {', '.join(PARAMSTYLES)}")
        if hasattr(connection, "cursor"):
            self._factory: Callable[[], Any] | None = None
            self._conn = connection
        elif callable(connection):
            self._factory = connection
            self._conn = None
        else:
            raise ValueError("SqlOffsetStore needs a DB-API connection or a zero-argument callable returning one, "
                             f"not {type(connection).__name__}")
        self.table = table
        self._style = paramstyle
        self._ready = False  # the table is known to exist on this connection
        self._upsert: bool | None = None  # does ON CONFLICT work here? None: not tried yet
        self._mutex = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        driver = type(self._conn).__module__.split(".")[0] if self._conn is not None else "not connected"
        return f"SqlOffsetStore(table {self.table!r}, {driver})"

    # -- the interface ---------------------------------------------------------

    def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        check_group(group)
        wanted = set(check_partitions(partitions))
        with self._mutex:
            conn = self._connection()
            try:
                rows = self._query(conn, "SELECT topic, partition_id, next_offset FROM {t} WHERE group_id = {{}}",
                                   (group,))
                conn.rollback()  # end the read transaction (no "idle in transaction" left on the server)
            except Exception as e:
                self._failed(conn)
                raise OffsetStoreError(f"{self!r}: cannot read the offsets of group {group!r}: {e}") from e
        out = {}
        for topic, partition, offset in rows:
            if (topic, int(partition)) in wanted:
                out[(topic, int(partition))] = int(offset)
        return out

    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        check_group(group)
        offsets = check_offsets(offsets)
        if not offsets:
            return
        with self._mutex:
            conn = self._connection()
            rows = [(group, topic, partition, offset) for (topic, partition), offset in sorted(offsets.items())]
            if self._upsert is not False:
                try:
                    self._write_upsert(conn, rows)
                    conn.commit()
                    self._upsert = True
                    return
                except Exception as e:
                    self._rollback(conn)
                    if self._upsert:  # it worked before: this is a real failure
                        self._failed(conn)
                        raise OffsetStoreError(f"{self!r}: commit of group {group!r} failed, nothing written: {e}") from e
                    first = e
            try:
                self._write_update_insert(conn, rows)
                conn.commit()
            except Exception as e:
                self._failed(conn)
                detail = f"{e}" if self._upsert is not None else f"{e} (and with ON CONFLICT: {first})"
                raise OffsetStoreError(f"{self!r}: commit of group {group!r} failed, nothing written: {detail}") from e
            self._upsert = False  # UPDATE/INSERT worked where ON CONFLICT did not

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    # -- SQL ---------------------------------------------------------------------

    def _write_upsert(self, conn, rows) -> None:
        cur = conn.cursor()
        try:
            for row in rows:
                self._execute(cur, "INSERT INTO {t} (group_id, topic, partition_id, next_offset, updated_at) "
                                   "VALUES ({{}}, {{}}, {{}}, {{}}, CURRENT_TIMESTAMP) "
                                   "ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET "
                                   "next_offset = excluded.next_offset, updated_at = excluded.updated_at", row)
        finally:
            cur.close()

    def _write_update_insert(self, conn, rows) -> None:
        cur = conn.cursor()
        try:
            for group, topic, partition, offset in rows:
                self._execute(cur, "UPDATE {t} SET next_offset = {{}}, updated_at = CURRENT_TIMESTAMP "
                                   "WHERE group_id = {{}} AND topic = {{}} AND partition_id = {{}}",
                              (offset, group, topic, partition))
                if cur.rowcount == 1:
                    continue
                # 0 rows, or a driver that does not count (-1), or MySQL's "changed rows" (0 for the same value):
                # look before inserting
                self._execute(cur, "SELECT 1 FROM {t} WHERE group_id = {{}} AND topic = {{}} AND partition_id = {{}}",
                              (group, topic, partition))
                if cur.fetchone() is None:
                    self._execute(cur, "INSERT INTO {t} (group_id, topic, partition_id, next_offset, updated_at) "
                                       "VALUES ({{}}, {{}}, {{}}, {{}}, CURRENT_TIMESTAMP)",
                                  (group, topic, partition, offset))
        finally:
            cur.close()

    def _create_table(self, conn) -> None:
        ddl = (f"CREATE TABLE IF NOT EXISTS {self.table} ("
               "group_id VARCHAR(255) NOT NULL, "
               "topic VARCHAR(255) NOT NULL, "
               "partition_id INTEGER NOT NULL, "
               "next_offset BIGINT NOT NULL, "
               "updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
               "PRIMARY KEY (group_id, topic, partition_id))")
        cur = conn.cursor()
        try:
            try:
                cur.execute(ddl)
                conn.commit()
            except Exception:
                # two clients creating it at once (PostgreSQL can say so with a unique violation), or
                # a user without CREATE rights on a table that exists: fine if the table is there
                self._rollback(conn)
                cur.execute(f"SELECT group_id, topic, partition_id, next_offset FROM {self.table} WHERE 1 = 0")
                cur.fetchall()
                conn.rollback()
        finally:
            cur.close()

    def _query(self, conn, sql: str, params: tuple) -> list:
        cur = conn.cursor()
        try:
            self._execute(cur, sql, params)
            return cur.fetchall()
        finally:
            cur.close()

    def _execute(self, cur, sql: str, params: tuple) -> None:
        text, args = render(sql.format(t=self.table), params, self._style)
        cur.execute(text, args)

    # -- the connection ------------------------------------------------------------

    def _connection(self):
        if self._closed:
            raise OffsetStoreError(f"{self!r} is closed")
        if self._conn is None:
            try:
                self._conn = self._factory()
            except Exception as e:
                raise OffsetStoreError(f"SqlOffsetStore(table {self.table!r}): cannot connect to the database: {e}") from e
            self._ready = False
        conn = self._conn
        if self._style is None:
            self._style = paramstyle_of(conn)
        if not self._ready:
            try:
                self._create_table(conn)
            except Exception as e:
                self._failed(conn)
                raise OffsetStoreError(f"{self!r}: cannot create or use the table {self.table!r}: {e}") from e
            self._ready = True
        return conn

    def _rollback(self, conn) -> None:
        try:
            conn.rollback()
        except Exception:
            pass

    def _failed(self, conn) -> None:
        """After an error: roll back; a connection we made is dropped, to be
        made again on the next call."""
        self._rollback(conn)
        if self._factory is not None and conn is self._conn:
            self._conn = None
            self._ready = False
            try:
                conn.close()
            except Exception:
                pass
