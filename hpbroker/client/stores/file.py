"""``FileOffsetStore``: offsets in one local JSON file (MetaQ's LocalOffsetStorage).

The file holds every group's offsets::

    {"version": 1, "groups": {"<group>": {"<topic>": {"<partition>": <next offset>}}}}

A commit is a read-modify-write of the whole file under an exclusive
``flock`` on the sidecar ``<path>.lock``, so processes sharing the file
(broadcast consumers on one host, say) never lose each other's groups.  The
new content goes to ``<path>.tmp``, is fsynced, renamed over ``<path>``,
and the directory is fsynced: a crash leaves the old file or the new one,
never a mix.  A ``.tmp`` left by a crash is never read, and the next commit
overwrites it.  Readers take no lock (the rename is atomic).

A file that exists but cannot be read or parsed is an
:class:`OffsetStoreError`, never an empty store: starting every partition
from ``auto_offset_reset`` because of a bad disk block would replay or
skip a whole topic silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Iterable, Mapping

from hpbroker.client.stores.base import (
    OffsetStoreError,
    TopicPartition,
    check_group,
    check_offsets,
    check_partitions,
)

#: where consumers keep their offsets with ``offset_store="file"`` and no path
DEFAULT_FILE_PATH = os.path.join("~", ".hpbroker", "offsets.json")

FORMAT_VERSION = 1


class FileOffsetStore:
    def __init__(self, path: str | os.PathLike = DEFAULT_FILE_PATH):
        self.path = Path(os.path.expanduser(os.fspath(path))).absolute()
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._mutex = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"FileOffsetStore({str(self.path)!r})"

    # -- the interface ---------------------------------------------------------

    def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        check_group(group)
        wanted = check_partitions(partitions)
        self._check_open()
        topics = self._read().get(group, {})
        out = {}
        for topic, partition in wanted:
            offset = topics.get(topic, {}).get(str(partition))
            if offset is not None:
                out[(topic, partition)] = offset
        return out

    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        check_group(group)
        offsets = check_offsets(offsets)
        self._check_open()
        if not offsets:
            return
        with self._mutex:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise OffsetStoreError(f"{self!r}: cannot open the lock file {self.lock_path}: {e}") from e
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX)
                except OSError as e:
                    raise OffsetStoreError(f"{self!r}: cannot lock {self.lock_path}: {e}") from e
                groups = self._read()
                topics = groups.setdefault(group, {})
                for (topic, partition), offset in offsets.items():
                    topics.setdefault(topic, {})[str(partition)] = offset
                self._write({"version": FORMAT_VERSION, "groups": groups})
            finally:
                os.close(lock_fd)  # releases the flock

    def close(self) -> None:
        self._closed = True

    # -- the file ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OffsetStoreError(f"{self!r} is closed")

    def _read(self) -> dict:
        """groups -> topics -> {"<partition>": offset}; {} when the file does not exist."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise OffsetStoreError(f"{self!r}: cannot read {self.path}: {e}") from e
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise OffsetStoreError(f"{self!r}: {self.path} is not valid JSON ({e}); "
                                   f"fix or remove it, the offsets in it are not used") from e
        problem = _check_document(doc)
        if problem:
            raise OffsetStoreError(f"{self!r}: {self.path} is not an offsets file: {problem}")
        return doc["groups"]

    def _write(self, doc: dict) -> None:
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        try:
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp_path, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise OffsetStoreError(f"{self!r}: cannot write {self.path}: {e}") from e


def _check_document(doc) -> str | None:
    """What is wrong with a parsed offsets file, or None."""
    if not isinstance(doc, dict):
        return f"the top level is a {type(doc).__name__}, not an object"
    if doc.get("version") != FORMAT_VERSION:
        return f"version {doc.get('version')!r}, this client reads version {FORMAT_VERSION}"
    groups = doc.get("groups")
    if not isinstance(groups, dict):
        return '"groups" is missing or not an object'
    for group, topics in groups.items():
        if not isinstance(topics, dict):
            return f"group {group!r} is not an object"
        for topic, parts in topics.items():
            if not isinstance(parts, dict):
                return f"group {group!r} topic {topic!r} is not an object"
            for p, offset in parts.items():
                good_offset = isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
                if not (p.isascii() and p.isdigit() and good_offset):
                    return f"group {group!r} topic {topic!r}: bad entry {p!r}: {offset!r}"
    return None
