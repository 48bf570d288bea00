"""Client-side stores of consumer-group offsets (issue 20; MetaQ's OffsetStorage).

One interface, :class:`OffsetStore` (``load``, ``commit``, ``close``), and
its implementations:

* ``"broker"``: nothing here, the consumer commits to the broker itself;
* ``"file"``: :class:`FileOffsetStore`, one local JSON file, fsynced, shared under ``flock``;
* ``"sql"``: :class:`SqlOffsetStore`, a table in a DB-API 2 database (SQLite, PostgreSQL...);
* ``"zookeeper"``: :class:`ZooKeeperOffsetStore`, MetaQ's znodes, written in one transaction;
* ``"module:Class"``: your own class, built with the options as keyword arguments.

:func:`resolve_store` turns a consumer's ``offset_store=`` (and its
``offset_store_path`` / ``_connection`` / ``_hosts`` options) into a store.
Every backend failure is an :class:`OffsetStoreError`.  See
docs/consumer.md, "Offset stores".
"""

from __future__ import annotations

import importlib
from typing import Any

from hpbroker.client.stores.base import OffsetStore, OffsetStoreError, TopicPartition
from hpbroker.client.stores.file import DEFAULT_FILE_PATH, FileOffsetStore
from hpbroker.client.stores.sql import DEFAULT_TABLE, SqlOffsetStore
from hpbroker.client.stores.zookeeper import ZooKeeperOffsetStore

__all__ = [
    "DEFAULT_FILE_PATH",
    "DEFAULT_TABLE",
    "FileOffsetStore",
    "OffsetStore",
    "OffsetStoreError",
    "SqlOffsetStore",
    "TopicPartition",
    "ZooKeeperOffsetStore",
    "resolve_store",
]

CHOICES = ("'broker', 'file', 'sql', 'zookeeper', a 'module:Class' string, "
           "or an object with load/commit/close methods")

# the options each built-in store takes (None-valued options are ignored, so a consumer can pass all of
# its offset_store_* settings whatever the store)
_OPTIONS = {
    "file": {"path"},
    "sql": {"connection", "table", "paramstyle"},
    "zookeeper": {"hosts", "root", "broker_id", "timeout_s"},
}


def resolve_store(spec: Any, **options: Any) -> OffsetStore | None:
    """The offset store *spec* names, built with *options*.

    * ``"broker"`` -> None: the consumer keeps offsets on the broker itself;
    * ``"file"`` -> ``FileOffsetStore(path or DEFAULT_FILE_PATH)``;
    * ``"sql"`` -> ``SqlOffsetStore(connection, table=..., paramstyle=...)``;
      ``connection`` is required;
    * ``"zookeeper"`` -> ``ZooKeeperOffsetStore(hosts, root=..., broker_id=...,
      timeout_s=...)``; ``hosts`` is required;
    * ``"package.module:Class"`` -> ``Class(**options)``;
    * an object with callable ``load``, ``commit`` and ``close`` -> itself.

    Options whose value is None are dropped.  Anything else is a ValueError.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if _is_store(spec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"offset_store must be {CHOICES}; got a {type(spec).__name__}")
    if spec in _OPTIONS or spec == "broker":
        unknown = set(options) - _OPTIONS.get(spec, set())
        if unknown:
            raise ValueError(f"offset_store={spec!r} takes no option {', '.join(sorted(unknown))}"
                             + (f" (it takes {', '.join(sorted(_OPTIONS[spec]))})" if spec in _OPTIONS else ""))
    if spec == "broker":
        return None
    if spec == "file":
        return FileOffsetStore(options.get("path") or DEFAULT_FILE_PATH)
    if spec == "sql":
        if "connection" not in options:
            raise ValueError("offset_store='sql' needs a connection (offset_store_connection=): "
                             "a DB-API connection or a zero-argument callable returning one")
        return SqlOffsetStore(options.pop("connection"), **options)
    if spec == "zookeeper":
        if "hosts" not in options:
            raise ValueError("offset_store='zookeeper' needs hosts (offset_store_hosts=), e.g. '127.0.0.1:2181'")
        return ZooKeeperOffsetStore(options.pop("hosts"), **options)
    module_name, sep, class_name = spec.partition(":")
    if sep and module_name and class_name:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"offset_store={spec!r}: cannot import {class_name} from {module_name}: {e}") from e
        store = cls(**options)
        if not _is_store(store):
            raise ValueError(f"offset_store={spec!r}: a {class_name} has no load/commit/close methods")
        return store
    raise ValueError(f"offset_store must be {CHOICES}; got {spec!r}")


def _is_store(obj: Any) -> bool:
    return not isinstance(obj, str) and all(callable(getattr(obj, m, None)) for m in ("load", "commit", "close"))
