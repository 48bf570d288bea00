"""Page-aligned buffers and O_DIRECT opens (with a clean, logged fallback).

O_DIRECT needs the memory address, the file position and the length of each
write to be multiples of the logical block size.  We use :data:`BLOCK` =
4096 (the page size), which satisfies every block device in practice.  An
anonymous ``mmap`` is page-aligned, so slices of it at multiples of
``BLOCK`` are valid O_DIRECT sources.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os

from hpbroker.io.fs import FileSystem

BLOCK = 4096
ZEROS = bytes(BLOCK)
log = logging.getLogger("hpbroker.io")
_warned: set[int] = set()


def align_down(n: int) -> int:
    return n & ~(BLOCK - 1)


def align_up(n: int) -> int:
    return (n + BLOCK - 1) & ~(BLOCK - 1)


def aligned_buffer(size: int) -> mmap.mmap:
    """An anonymous, page-aligned, zero-filled buffer of ``align_up(size)`` bytes."""
    return mmap.mmap(-1, align_up(max(size, BLOCK)))


def open_append(fs: FileSystem, path: str, want_direct: bool, create: bool = True) -> tuple[int, bool]:
    """Open ``path`` read-write for appends; O_DIRECT when wanted and allowed.

    Returns ``(fd, is_direct)``.  When the filesystem refuses O_DIRECT
    (EINVAL, as some tmpfs do) the file is opened buffered and that is
    logged once per filesystem.
    """
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    direct = getattr(os, "O_DIRECT", 0)
    if want_direct and direct:
        try:
            return fs.open(path, flags | direct), True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            dev = os.stat(os.path.dirname(path) or ".").st_dev
            if dev not in _warned:
                _warned.add(dev)
                log.warning("O_DIRECT refused on the filesystem of %s (%s); using buffered writes",
                            os.path.dirname(path), e)
    return fs.open(path, flags), False
