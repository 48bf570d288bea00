"""The consumer's check of every fetched batch (Kafka's ``check.crcs``).

A fetch reply is whole batches laid end to end, exactly the bytes the
producer sent plus the two fields the broker stamps (``base_offset`` and
``leader_epoch``, outside the CRC).  Before a batch is handed out,
:func:`check_reply` makes sure it is one:

* always (decoding depends on it): the header is whole, ``magic`` is 2,
  ``batch_length`` and ``record_count`` fit each other and the reply;
* with ``check_crcs`` (the default): the CRC32C over bytes
  ``[24, batch_length)`` matches the header's, and, on a fetch without a
  server-side filter, the offsets run on without a gap or an overlap from
  the fetch offset (that is what checks ``base_offset``, which the CRC does
  not cover: docs/reliability.md, "Bit flips").

It walks the reply once, per batch, never per record: one CRC32C call (15
GB/s in hardware here) and a few integer compares per batch.  The good
batches before a bad one are kept and handed out; the bad one raises
:class:`CorruptBatchError` when the consumer reaches it, and again at every
poll until the application seeks past it (as Kafka's consumer does).
"""

from __future__ import annotations

import struct

from crc32c import crc32c

from hpbroker import batch
from hpbroker.protocol.errors import BrokerError, ErrorCode

# base_offset(0) batch_length(8) magic(16) crc(20) record_count(28): the fields checked
_FIELDS = struct.Struct("<qI4xB3xI4xI")
_HDR = batch.HEADER_SIZE
_ENT = batch.ENTRY_SIZE
_CRC_START = batch.CRC_START


class CorruptBatchError(BrokerError):
    """A fetched batch that is not what its producer wrote: code
    CORRUPT_BATCH when this consumer's check found it, CORRUPT_STORED_BATCH
    when the broker did (a filtered fetch).  ``topic``, ``partition`` and
    ``offset`` (where the consumer stands: the first offset of the bad batch
    it could not hand out) say where; :meth:`Consumer.seek` past it to go on."""

    def __init__(self, topic: str, partition: int, offset: int, message: str, code: int = ErrorCode.CORRUPT_BATCH):
        super().__init__(code, f"{topic}/{partition} at offset {offset}: {message}")
        self.topic = topic
        self.partition = partition
        self.offset = offset


def check_reply(data, fetch_offset: int, *, crcs: bool = True, contiguous: bool = True):
    """Walk the batches of one fetch reply.  Returns ``(end, next_offset,
    problem)``: the bytes of good batches from the start, the offset after
    the last good one (``fetch_offset`` when none) and None, or the reason
    the batch at ``end`` cannot be handed out (with ``next_offset`` the
    offset that batch should have started at)."""
    mv = memoryview(data)
    n = len(mv)
    pos = 0
    expect = fetch_offset
    first = True
    unpack = _FIELDS.unpack_from
    while pos + _HDR <= n:
        base, length, magic, crc, count = unpack(mv, pos)
        if magic != batch.MAGIC:
            return pos, expect, f"bad magic {magic} in the batch at byte {pos} of the reply"
        if length < _HDR + _ENT or pos + length > n or count < 1 or _HDR + count * _ENT > length:
            return pos, expect, (f"the batch at byte {pos} of the reply has batch_length {length} and "
                                 f"record_count {count}, which do not fit each other or the reply")
        if crcs:
            got = crc32c(mv[pos + _CRC_START: pos + length])
            if got != crc:
                return pos, expect, (f"the batch of offsets {base}..{base + count - 1} (as its header says) fails "
                                     f"its CRC32C check (header {crc:#010x}, bytes {got:#010x}): these are not the "
                                     "bytes its producer sent")
            if contiguous:
                if first:
                    if not base <= expect < base + count:
                        return pos, expect, (f"the reply starts with a batch of offsets {base}..{base + count - 1}, "
                                             f"not the one holding offset {expect} that was asked for")
                elif base != expect:
                    return pos, expect, (f"a batch claims base offset {base} where offset {expect} follows the one "
                                         "before it (base_offset lies outside the CRC)")
        first = False
        expect = base + count
        pos += length
    return pos, expect, None
