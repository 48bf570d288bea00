"""Length + CRC32C frames, and the file chores of the client's local journals.

Two client stores keep their data in append-only files of the same frames:
the consumer's recovery journal (:mod:`~hpbroker.client.recovery_journal`)
and the producer's spill journal (:mod:`~hpbroker.client.spill`).  What they
share lives here, once: the frame itself, the scan that tells a torn tail
(cut it) from damage in the middle (refuse), durable directory creation,
and the one-process ``flock``.

A frame, all integers little-endian:

=======  ========  ============  ==========================================
offset   size      field         notes
=======  ========  ============  ==========================================
0        4         length        uint32, payload bytes, 1 .. ``MAX_FRAME``
4        4         crc           uint32, CRC32C of bytes [0, 4) (the length)
                                 and then the payload
8        length    payload       the store's own record
=======  ========  ============  ==========================================

and the next frame starts right after the payload.  The CRC covers the
length too, so a length field that was hit reads as a bad frame, not as a
frame of another size.

A frame that does not check out (a length past the end of the data or out
of range, a CRC mismatch) is a torn tail when no valid frame follows it: a
write a crash cut short, never acknowledged, which the store truncates.  A
bad frame *followed* by a valid one is damage in the middle, where
acknowledged data lives: :class:`FrameScan` raises :class:`JournalCorrupt`
naming the file and the offset, and nothing is dropped.  (A torn frame whose
partial payload happens to hold a whole valid frame also raises: the doubt
falls on the safe side.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
from crc32c import crc32c

#: the largest payload a frame may declare; a length above it is corruption
MAX_FRAME = 1 << 30

_FRAME = struct.Struct("<II")
FRAME_HEADER = _FRAME.size
_LEN = struct.Struct("<I")


class JournalError(Exception):
    """A local journal cannot be used."""


class JournalCorrupt(JournalError):
    """Damage before the tail: opening would drop acknowledged data."""


class JournalLocked(JournalError):
    """Another process has the journal open."""


def frame(payload) -> bytes:
    """One frame holding ``payload`` (bytes-like, 1 .. MAX_FRAME bytes)."""
    head = _LEN.pack(len(payload))
    return head + _LEN.pack(crc32c(payload, crc32c(head))) + payload


def frame_problem(mv: memoryview, pos: int) -> str | None:
    """Why the frame at ``pos`` is not a whole, valid frame (None if it is)."""
    n = len(mv)
    if n - pos < FRAME_HEADER:
        return f"{n - pos} bytes, shorter than a frame header"
    length, crc = _FRAME.unpack_from(mv, pos)
    if length < 1 or length > MAX_FRAME:
        return f"length {length} out of range"
    if pos + FRAME_HEADER + length > n:
        return f"length {length} runs past the end of the file ({n} bytes)"
    got = crc32c(mv[pos + FRAME_HEADER : pos + FRAME_HEADER + length], crc32c(mv[pos : pos + 4]))
    if got != crc:
        return f"CRC32C mismatch: frame says {crc:#010x}, bytes give {got:#010x}"
    return None


_SCAN_CHUNK = 1 << 20


def next_valid_frame(mv: memoryview, start: int) -> int | None:
    """The first offset >= ``start`` where a whole frame with a matching CRC
    starts, or None.  The length test runs over a chunk of offsets at once
    (numpy); only the offsets it leaves are CRC-checked."""
    n = len(mv)
    last = n - FRAME_HEADER  # the last offset where a frame header fits
    raw = np.frombuffer(mv, dtype=np.uint8)
    for lo in range(start, last + 1, _SCAN_CHUNK):
        hi = min(lo + _SCAN_CHUNK, last + 1)  # offsets [lo, hi)
        b = raw[lo : hi + 3].astype(np.int64)
        k = hi - lo
        lengths = b[0:k] | (b[1 : k + 1] << 8) | (b[2 : k + 2] << 16) | (b[3 : k + 3] << 24)
        room = (n - FRAME_HEADER) - np.arange(lo, hi, dtype=np.int64)
        for i in np.flatnonzero((lengths >= 1) & (lengths <= room) & (lengths <= MAX_FRAME)).tolist():
            if frame_problem(mv, lo + i) is None:
                return lo + i
    return None


class FrameScan:
    """The frames of ``buf`` (a whole file's bytes), checked one by one.

    Iterating yields ``(pos, payload)`` for each valid frame (``payload`` a
    memoryview into ``buf``).  At the first bad frame it stops when no valid
    frame follows (a torn tail: :attr:`end` is where the valid frames end,
    :attr:`why` says what was wrong), and raises :class:`JournalCorrupt`
    naming ``where`` (the file) and the offset when one does, or when
    ``tail_ok`` is False (a file that is not the last one written, so its
    end was complete before the next one began)."""

    def __init__(self, buf, where: str, *, tail_ok: bool = True):
        self.mv = memoryview(buf)
        self.where = where
        self.tail_ok = tail_ok
        self.end = 0
        self.why: str | None = None

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        mv = self.mv
        pos, n = 0, len(mv)
        unpack = _LEN.unpack_from
        while pos < n:
            why = frame_problem(mv, pos)
            if why is not None:
                after = next_valid_frame(mv, pos + 1)
                if after is not None:
                    raise JournalCorrupt(
                        f"{self.where}: the frame at offset {pos} is corrupt ({why}), but a valid "
                        f"frame follows at offset {after}: damage in the middle, not a torn tail. Nothing was "
                        f"dropped; move the file aside to start a new journal, or repair it")
                if not self.tail_ok:
                    raise JournalCorrupt(
                        f"{self.where}: the frame at offset {pos} is corrupt ({why}), and this file is not the "
                        f"last one: damage in the middle, not a torn tail. Nothing was dropped; move the "
                        f"directory aside to start a new journal, or repair it")
                self.why = why
                break
            length = unpack(mv, pos)[0]
            start = pos + FRAME_HEADER
            self.end = pos = start + length
            yield start - FRAME_HEADER, mv[start:pos]


# -- files ----------------------------------------------------------------------------------


def write_all(fd: int, data, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        k = os.pwrite(fd, mv, offset)
        mv = mv[k:]
        offset += k


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> None:
    """Create ``directory`` (0700: it holds message data) and fsync each new
    level's parent, so a journal file's path survives a crash."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def lock(lock_path: Path, what: str) -> int:
    """flock ``lock_path`` for this process and write our pid in it; return
    the fd (closing it releases the lock).  :class:`JournalLocked` (naming
    ``what`` and the holder's pid) when another process, or another opener
    in this one, has it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            try:
                pid = os.pread(fd, 32, 0).decode().strip()
            except (OSError, UnicodeDecodeError):
                pid = ""
            os.close(fd)
            who = ("is already open in this process" if pid == str(os.getpid())
                   else f"is in use by another process{f' (pid {pid})' if pid.isdigit() else ''}")
            raise JournalLocked(f"{what} {who}; one process at a time may open it, "
                                f"once (lock file {lock_path})") from None
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
