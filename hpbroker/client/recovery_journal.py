"""The consumer's local recovery journal: messages a handler kept failing on.

MetaQ's consumer stores a message its listener cannot process, after the
retries, in a local ``RecoverStorageManager`` (``~/.meta_recover``, one store
per topic@group) and redelivers it later, so one poison message neither
stops the partition nor is lost.  :class:`RecoveryJournal` is that store:
one append-only file per ``"<topic>@<group>"`` in ``DEFAULT_RECOVER_DIR``
(``~/.hpbroker/recover``) or the directory given.

* :meth:`~RecoveryJournal.add` appends a failed message and returns its id
  only after ``write`` + ``fdatasync``: once it returns, the entry survives
  a crash of the process or the machine.
* :meth:`~RecoveryJournal.pending` lists the entries not yet done, in the
  order they were added.
* :meth:`~RecoveryJournal.done` records (durably) that an entry was
  redelivered successfully; :meth:`~RecoveryJournal.retry_failed` that a
  redelivery failed again (its ``attempts`` go up, ``error`` is the new one).

File layout
-----------

``<directory>/<name>.journal`` is a sequence of CRC32C frames, each holding
one msgpack record: an entry added, an entry done, a redelivery attempt
failed, or the start of a compacted file.  The frame and its records are
drawn, with the code that writes and reads them, in
:mod:`hpbroker.client.recovery_format`.

Opening replays the frames.  A frame that does not check out (a length past
the end of the file or out of range, a CRC mismatch) is a torn or corrupt
tail when no valid frame follows it anywhere in the file: a write cut short
by a crash, never acknowledged.  The file is truncated there (and the cut
fsynced, with a warning logged).  A bad frame *followed* by a valid one is
damage in the middle, where acknowledged entries live: opening raises
:class:`JournalCorrupt` naming the file and the offset, and drops nothing.
A frame whose CRC matches but whose payload does not decode is never a torn
write: it raises too.  (A torn frame whose partial payload happens to hold
a whole valid frame also makes opening raise: the doubt falls on the safe
side.)

Compaction: when no entry is pending any more, or when the file is larger
than ``compact_bytes`` and more entries in it are done than pending, the
live entries (as they are now, with their ids) are written to
``<file>.tmp``, which is fsynced and renamed over the file, and the
directory is fsynced: a crash leaves the old file or the new one whole.

One process at a time: opening takes an ``fcntl.flock`` on
``<directory>/<name>.lock`` (a file that compaction never replaces) and
raises :class:`JournalLocked` when another process holds it.  Within a
process the methods are thread-safe.  The whole file is read at open, so a
journal is meant to stay small: it holds failures, not a topic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import msgspec

from hpbroker.client.framing import (FRAME_HEADER, MAX_FRAME, FrameScan, JournalCorrupt, JournalError,  # noqa: F401
                                     JournalLocked, fsync_dir as _fsync_dir, make_dirs as _make_dirs,
                                     write_all as _write_all)
from hpbroker.client import framing
from hpbroker.client.recovery_format import Entry, _Add, _Attempt, _decoder, _Done, _Start, frame, journal_filename

log = logging.getLogger("hpbroker.client")

#: where journals live unless a directory is given (MetaQ's ~/.meta_recover)
DEFAULT_RECOVER_DIR = Path("~/.hpbroker/recover")
#: compact a file larger than this once most of its entries are done
DEFAULT_COMPACT_BYTES = 4 << 20

class RecoveryJournal:
    def __init__(self, directory: str | os.PathLike | None, name: str, *,
                 compact_bytes: int = DEFAULT_COMPACT_BYTES):
        directory = Path(DEFAULT_RECOVER_DIR if directory is None else directory).expanduser()
        base = journal_filename(name)
        self.name = name
        self.directory = directory
        self.path = directory / f"{base}.journal"
        self.compact_bytes = compact_bytes
        self.truncated_bytes = 0  # cut off the tail at open (a torn last write)
        self._mutex = threading.Lock()
        self._entries: dict[int, Entry] = {}
        self._next_id = 1
        self._done_in_file = 0  # entries added in this file and done since
        self._size = 0
        self._fd = -1
        self._failed: BaseException | None = None
        _make_dirs(directory)
        self._lock_fd = framing.lock(directory / f"{base}.lock", f"recovery journal {self.path}")
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            if self._fd >= 0:
                os.close(self._fd)
            raise

    # -- the API ---------------------------------------------------------------------------

    def add(self, entry: Entry) -> int:
        """Append ``entry`` durably and return its id."""
        if not isinstance(entry, Entry):
            raise TypeError(f"add() takes a RecoveryJournal Entry, got {type(entry).__name__}")
        with self._mutex:
            self._check_open()
            rid = self._next_id
            data = frame(_Add(rid, entry))
            try:
                # An Entry built with a wrong type (msgspec does not check at
                # construction) must not reach the file: it would not replay.
                # The decoded copy is also the one kept: bytes, tuples.
                entry = _decoder.decode(memoryview(data)[FRAME_HEADER:]).entry
            except msgspec.ValidationError as e:
                raise TypeError(f"entry does not fit the journal's Entry fields: {e}") from None
            self._append(data)
            self._next_id = rid + 1
            self._entries[rid] = entry
            return rid

    def pending(self) -> list[tuple[int, Entry]]:
        """The entries not done yet, ``(id, entry)``, in the order they were added."""
        with self._mutex:
            return list(self._entries.items())

    def get(self, rid: int) -> Entry:
        with self._mutex:
            return self._entries[rid]

    def done(self, rid: int) -> None:
        """Record durably that entry ``rid`` was redelivered; it is gone
        from :meth:`pending`.  KeyError for an id not pending."""
        with self._mutex:
            self._check_open()
            self._known(rid)
            self._append(frame(_Done(rid)))
            del self._entries[rid]
            self._done_in_file += 1
            self._maybe_compact()

    def retry_failed(self, rid: int, error: str) -> Entry:
        """Record durably that redelivering entry ``rid`` failed again:
        ``attempts`` + 1, ``error`` and ``failed_at`` now.  Returns the
        updated entry."""
        with self._mutex:
            self._check_open()
            old = self._known(rid)
            new = msgspec.structs.replace(old, attempts=old.attempts + 1, error=str(error), failed_at=time.time())
            self._append(frame(_Attempt(rid, new.attempts, new.error, new.failed_at)))
            self._entries[rid] = new
            self._maybe_compact()
            return new

    def compact(self) -> None:
        """Rewrite the file with the pending entries only (see the module doc)."""
        with self._mutex:
            self._check_open()
            self._compact()

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    @property
    def size(self) -> int:
        """The file's length in bytes."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def __enter__(self) -> "RecoveryJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RecoveryJournal({str(self.path)!r}, pending={len(self._entries)})"

    # -- writing ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise JournalError(f"recovery journal {self.path} is closed")
        if self._failed is not None:
            raise JournalError(f"recovery journal {self.path} failed a write earlier ({self._failed}); "
                               "reopen it to see what is on disk") from self._failed

    def _known(self, rid: int) -> Entry:
        try:
            return self._entries[rid]
        except KeyError:
            raise KeyError(f"no pending entry {rid} in the recovery journal {self.path}") from None

    def _append(self, data: bytes) -> None:
        """Write one frame at the end and fdatasync it.  On a failed write
        the file is cut back to where it was, so a half frame never sits
        before later ones; a failed fdatasync leaves the journal unusable
        (what reached the disk is unknown) until it is reopened."""
        try:
            _write_all(self._fd, data, self._size)
        except OSError as e:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._failed = e
            raise
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            self._failed = e
            raise
        self._size += len(data)

    def _maybe_compact(self) -> None:
        """Compact when due.  What the caller recorded is already durable, so
        a compaction that fails is logged, not raised: before its rename the
        old file is whole and stays in use (after it, the journal refuses
        writes until reopened, see :meth:`_compact`)."""
        if self._entries:
            due = self._size > self.compact_bytes and self._done_in_file > len(self._entries)
        else:
            due = self._done_in_file > 0  # all done: the file shrinks to its start frame
        if not due:
            return
        try:
            self._compact()
        except OSError as e:
            log.warning("recovery journal %s: compaction failed, the file stays as it was: %s", self.path, e)

    def _compact(self) -> None:
        tmp = Path(f"{self.path}.tmp")
        data = bytearray(frame(_Start(self._next_id)))
        for rid, e in self._entries.items():
            data += frame(_Add(rid, e))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                _write_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        # The path names the new file now; self._fd still writes to the old one.
        try:
            new_fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            self._failed = e
            raise
        os.close(self._fd)
        self._fd = new_fd
        self._size = len(data)
        self._done_in_file = 0
        try:
            _fsync_dir(self.directory)
        except OSError as e:  # the rename may not be durable: writes to the new file could vanish
            self._failed = e
            raise

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            os.unlink(f"{self.path}.tmp")  # a compaction cut short: the journal itself is whole
        except FileNotFoundError:
            pass
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created:
            _fsync_dir(self.directory)
        with os.fdopen(os.dup(self._fd), "rb") as f:
            buf = f.read()
        end = self._replay(buf)
        if end < len(buf):
            log.warning("recovery journal %s: cut a torn tail of %d bytes at offset %d (a write a crash "
                        "interrupted, never acknowledged)", self.path, len(buf) - end, end)
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
            self.truncated_bytes = len(buf) - end
        self._size = end
        self._maybe_compact()

    def _replay(self, buf: bytes) -> int:
        """Apply every frame of ``buf``; return where the valid frames end."""
        scan = FrameScan(buf, f"recovery journal {self.path}")
        for pos, payload in scan:
            try:
                rec = _decoder.decode(payload)
            except msgspec.DecodeError as e:
                raise JournalCorrupt(f"recovery journal {self.path}: the frame at offset {pos} has a good CRC "
                                     f"but its record does not decode ({e}); written by another version?") from None
            self._apply(rec, pos)
        return scan.end

    def _apply(self, rec, pos: int) -> None:
        if isinstance(rec, _Add):
            if rec.id in self._entries:
                raise JournalCorrupt(f"recovery journal {self.path}: entry {rec.id} is added twice (offset {pos})")
            self._entries[rec.id] = rec.entry
            self._next_id = max(self._next_id, rec.id + 1)
        elif isinstance(rec, _Done):
            if self._entries.pop(rec.id, None) is not None:
                self._done_in_file += 1
        elif isinstance(rec, _Attempt):
            old = self._entries.get(rec.id)
            if old is not None:
                self._entries[rec.id] = msgspec.structs.replace(old, attempts=rec.attempts, error=rec.error,
                                                                failed_at=rec.failed_at)
        else:
            self._next_id = max(self._next_id, rec.next_id)
