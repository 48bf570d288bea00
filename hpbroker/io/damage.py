"""Torn, or damaged after it was written?  Recovery's question about a bad
batch that is the last thing in a log (docs/storage.md, "Recovery", rule 4).

A crash tears a write at sector granularity: the sectors it never reached
keep what they held, and past the log's acknowledged end that is zeros (a
new extent, or the O_DIRECT padding of the last block).  So a torn batch
always holds at least one 512-byte-aligned piece of all zeros, or reaches
past the end of the file.  Such a batch was never acknowledged (nothing
after a torn write was synced) and is cut.

A batch that was written whole and changed afterwards (a bit flipped by the
disk, the controller or memory) is data that may have been acknowledged:
it must fence the partition, never be cut.  :func:`written_then_damaged`
says so when either

* its CRC32C matches over the covered bytes ``[24, batch_length)`` (or over
  the length its record table adds up to): only a field the CRC does not
  cover is wrong (base offset, length, epoch, magic, reserved bytes); or
* it has no unwritten-looking piece and the CRC mismatch is exactly one
  flipped bit (:func:`hpbroker.io.bitflip.single_bit_error`), in the data
  or in the stored CRC itself.

Anything else (junk over the tail, several bits, a zeroed piece) is taken
as torn, as before.  A batch whose data legitimately holds an aligned run
of 512 zero bytes, or ends in a few zero bytes just past a sector boundary,
looks torn too: a bit flip there is cut like a torn tail.
"""

from __future__ import annotations

import os

import numpy as np
from crc32c import crc32c

from hpbroker import batch as B
from hpbroker.io.bitflip import single_bit_error

SECTOR = 512
_ZEROS = bytes(SECTOR)


def unwritten_piece(data, pos: int) -> int | None:
    """Offset in ``data`` (a batch read from file position ``pos``) of the
    first sector-aligned piece that is all zeros, or None."""
    n = len(data)
    start = 0
    edge = (pos // SECTOR + 1) * SECTOR - pos  # end of the first (partial) sector
    mv = memoryview(data)
    while start < n:
        stop = min(edge, n)
        if mv[start:stop] == _ZEROS[: stop - start]:
            return start
        start, edge = stop, edge + SECTOR
    return None


def _table_length(fd: int, pos: int, count: int, avail: int, pread) -> int | None:
    """The batch length the record table adds up to, when it fits."""
    if count < 1 or B.HEADER_SIZE + count * B.ENTRY_SIZE > avail:
        return None
    raw = pread(fd, count * B.ENTRY_SIZE, pos + B.HEADER_SIZE)
    if len(raw) != count * B.ENTRY_SIZE:
        return None
    t = np.frombuffer(raw, dtype=B.ENTRY_DTYPE)
    if (t["key_len"] < -1).any() or (t["value_len"] < 0).any() or (t["headers_len"] < 0).any():
        return None
    n = B.HEADER_SIZE + count * B.ENTRY_SIZE + int(np.maximum(t["key_len"], 0).sum(dtype=np.int64)
                                                     + t["value_len"].sum(dtype=np.int64)
                                                     + t["headers_len"].sum(dtype=np.int64))
    return n if n <= avail else None


def written_then_damaged(fd: int, pos: int, size: int, *, pread=os.pread) -> str | None:
    """Why the bad batch at ``pos`` (nothing valid after it, up to ``size``)
    was written whole and damaged afterwards; None when it may be torn."""
    avail = size - pos
    if avail < B.HEADER_SIZE:
        return None
    head = pread(fd, B.HEADER_SIZE, pos)
    if len(head) < B.HEADER_SIZE or head == bytes(B.HEADER_SIZE):
        return None
    h = B.read_header(head)
    lengths = [h.batch_length]
    implied = _table_length(fd, pos, h.record_count, avail, pread)
    if implied is not None and implied != h.batch_length:
        lengths.append(implied)
    for length in lengths:
        if B.CRC_START < length <= avail:
            data = pread(fd, length, pos)
            if len(data) == length and crc32c(memoryview(data)[B.CRC_START:]) == h.crc:
                how = "" if length == h.batch_length else f" over the {length} bytes its record table adds up to"
                return (f"its CRC32C matches{how}, so it was written whole and a field outside the CRC was "
                        "damaged after it was written")
    length = h.batch_length
    if not B.HEADER_SIZE <= length <= avail:
        return None  # reaches past the file: the rest of it was never written
    data = pread(fd, length, pos)
    if len(data) != length or unwritten_piece(data, pos) is not None:
        return None
    syndrome = crc32c(memoryview(data)[B.CRC_START:]) ^ h.crc
    if syndrome & (syndrome - 1) == 0:
        return (f"its bytes were all written and only bit {syndrome.bit_length() - 1} of its stored CRC32C differs: "
                "damaged after it was written")
    flip = single_bit_error(syndrome, length - B.CRC_START)
    if flip is not None:
        byte, bit = flip
        return (f"its bytes were all written and exactly one bit differs from what its CRC32C covers (byte "
                f"{B.CRC_START + byte} of the batch, bit {bit}): damaged after it was written")
    return None
