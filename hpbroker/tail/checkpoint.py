"""Where each followed file was acknowledged up to, kept across restarts.

One JSON file, ``<state_dir>/checkpoints.json``, replaced whole by
``FileSystem.write_atomic`` (tmp file, fsync, rename, fsync of the
directory: a crash leaves the old or the new one, never a mix).  One entry
per file::

    {"dev": 2049, "ino": 1234, "offset": 52428800, "fp_len": 1024, "fp_crc": 3735928559,
     "path": "/var/log/app.log", "source": "app"}

``offset`` is the end of the last record the broker acknowledged, in order
(:mod:`hpbroker.tail.shipper`).  ``dev`` + ``ino`` name the file whatever
it was renamed to; ``fp_len`` / ``fp_crc`` are the CRC32C of its first
``fp_len`` bytes (the fingerprint), so an inode the filesystem handed to a
new file is not mistaken for the old one.

:class:`CheckpointWriter` writes on a thread of its own, always the newest
state it was given (states given while a write is under way collapse into
one), so the agent's reading never waits for an fsync.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from crc32c import crc32c

from hpbroker.io.fs import FileSystem

FILE_NAME = "checkpoints.json"
LOCK_NAME = "lock"
VERSION = 1


@dataclass(frozen=True)
class Entry:
    dev: int
    ino: int
    offset: int
    fp_len: int
    fp_crc: int
    path: str
    source: str


class Fingerprint:
    """The CRC32C of a file's first ``length`` bytes."""

    __slots__ = ("length", "crc")

    def __init__(self, length: int, crc: int):
        self.length = length
        self.crc = crc

    @classmethod
    def of(cls, fd: int, want: int, size: int) -> "Fingerprint":
        """The fingerprint over ``min(want, size)`` bytes of the open file."""
        n = min(want, size)
        data = os.pread(fd, n, 0) if n else b""
        return cls(len(data), crc32c(data))

    def matches(self, fd: int) -> bool:
        """Does the open file still begin with the bytes this was taken over?"""
        if self.length == 0:
            return True
        data = os.pread(fd, self.length, 0)
        return len(data) == self.length and crc32c(data) == self.crc

    def __eq__(self, other) -> bool:
        return isinstance(other, Fingerprint) and (self.length, self.crc) == (other.length, other.crc)

    def __repr__(self) -> str:
        return f"Fingerprint({self.length}, {self.crc:#x})"


class StateDirLocked(RuntimeError):
    pass


class CheckpointStore:
    """``checkpoints.json`` in ``directory``: :meth:`load` and :meth:`save`."""

    def __init__(self, directory: str, fs: FileSystem | None = None):
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self.fs = fs or FileSystem()
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the state directory for this agent alone (an ``flock``,
        released when the process ends, kill -9 included)."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirLocked(f"another hpbroker tail is using the state directory {self.directory}") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> list[Entry]:
        """The entries of the last complete write ([] when there is none).
        A file that does not parse raises ValueError: the agent must not
        silently start every file from its beginning."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
            return [Entry(**e) for e in doc["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path}: unreadable checkpoint file ({e}); move it away to start every file afresh") from None

    def save(self, entries: list[Entry]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        doc = {"version": VERSION, "written_at": time.time(), "files": [asdict(e) for e in entries]}
        self.fs.write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode())


class CheckpointWriter:
    """Writes the newest state handed to :meth:`submit` on its own thread.

    ``min_interval`` (seconds) spaces writes out (0: one after the other,
    as fast as the disk takes them).  A failed write is reported through
    ``on_error(exc)`` (once per failure streak; ``on_error(None)`` when a
    write succeeds again) and retried with the next state or after a second.
    """

    def __init__(self, store: CheckpointStore, min_interval: float = 0.0,
                 on_error: Callable[[BaseException | None], None] | None = None,
                 on_written: Callable[[object], None] | None = None):
        self.store = store
        self.min_interval = min_interval
        self.on_error = on_error or (lambda e: None)
        self.on_written = on_written or (lambda token: None)
        self._cond = threading.Condition()
        self._pending: list[Entry] | None = None
        self._token = None
        self._stop = False
        self._failing = False
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="hpbroker-tail-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, entries: list[Entry], token=None) -> None:
        """Write ``entries`` (replacing any not written yet); once they are
        on disk, ``on_written(token)`` is called from the writer's thread."""
        with self._cond:
            self._pending = entries
            self._token = token
            self._cond.notify()

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._pending is None:
                    return
                wait = last + self.min_interval - time.monotonic()
                if wait > 0 and not self._stop:
                    self._cond.wait(wait)
                entries, self._pending = self._pending, None
                token = self._token
            last = time.monotonic()
            if self._write(entries):
                self.on_written(token)
            else:
                with self._cond:
                    if self._pending is None:
                        self._pending, self._token = entries, token
                    if not self._stop:
                        self._cond.wait(1.0)
                    else:
                        return

    def _write(self, entries: list[Entry]) -> bool:
        try:
            self.store.save(entries)
        except OSError as e:
            if not self._failing:
                self._failing = True
                self.on_error(e)
            return False
        self.writes += 1
        if self._failing:
            self._failing = False
            self.on_error(None)
        return True

    def close(self, final: list[Entry] | None = None) -> bool:
        """Stop the thread after its write in progress, then write ``final``
        (or whatever was still pending) here; True when it was written."""
        with self._cond:
            self._stop = True
            left = self._pending
            self._pending = None
            self._cond.notify()
        self._thread.join()
        entries = final if final is not None else left
        if entries is None:
            return True
        return self._write(entries)
