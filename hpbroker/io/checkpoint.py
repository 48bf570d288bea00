"""The recovery-point checkpoint: ``<partition dir>/recovery-point``.

Every batch below the recovery point is durable and lives in a segment whose
indexes were synced; recovery trusts those segments and CRC-scans the rest.
It is written at each segment roll and at a clean close, atomically: temp
file, fsync, rename, fsync of the directory.  20 bytes, little-endian:

=======  ====  ===============  ==========================================
offset   size  field            notes
=======  ====  ===============  ==========================================
0        4     magic            ``b"HPRP"``
4        4     version          uint32, 1
8        8     recovery_point   int64, next offset known durable
16       4     crc              uint32 CRC32C of bytes [0, 16)
=======  ====  ===============  ==========================================

A missing or damaged checkpoint reads as 0: everything is scanned.
"""

from __future__ import annotations

import logging
import os
import struct

from crc32c import crc32c

from hpbroker.io.fs import FileSystem
from hpbroker.io.layout import CHECKPOINT_NAME

_HEAD = struct.Struct("<4sIq")
_CRC = struct.Struct("<I")
MAGIC = b"HPRP"
VERSION = 1
log = logging.getLogger("hpbroker.io")


def encode(recovery_point: int) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, recovery_point)
    return head + _CRC.pack(crc32c(head))


def decode(data: bytes) -> int | None:
    if len(data) != _HEAD.size + _CRC.size:
        return None
    head = data[: _HEAD.size]
    magic, version, rp = _HEAD.unpack(head)
    if magic != MAGIC or version != VERSION or _CRC.unpack_from(data, _HEAD.size)[0] != crc32c(head) or rp < 0:
        return None
    return rp


def read(d: str) -> int:
    path = os.path.join(d, CHECKPOINT_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    rp = decode(data)
    if rp is None:
        log.warning("%s is damaged; recovery scans the whole partition", path)
        return 0
    return rp


def write(fs: FileSystem, d: str, recovery_point: int) -> None:
    fs.write_atomic(os.path.join(d, CHECKPOINT_NAME), encode(recovery_point))
