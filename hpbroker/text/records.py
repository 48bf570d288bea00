"""MetaQ messages <-> hpbroker records.

A MetaQ message is a payload, an optional string attribute (flag bit 0)
and a broker-assigned 64-bit msgId.  Put through the text port, the puts of
one batch become records:

================  ==========================================================
record field      from the MetaQ message
================  ==========================================================
key               none (null)
value             the payload (the put body without its attribute)
header metaq.id   the first record of the batch only: its msgId, 8 bytes
                  big-endian.  The batch's msgIds are consecutive
                  (:meth:`hpbroker.text.msgids.MsgIds.block`): record i's
                  is the first one's plus i.
header            the attribute's bytes, when flag bit 0 is set (MetaQ's
metaq.attribute   attrLen + attr prefix of the body is not kept)
header            the flag, 4 bytes big-endian, only when bits other than
metaq.flag        bit 0 are set
================  ==========================================================

One header per batch, not per record: the acceptor decodes every header
it is sent (batch.check_headers), and per record that was the text path's
largest cost after parsing (docs/performance.md, "MetaQ's text protocol").

A ``get`` turns records back into MetaQ's on-disk message format
(``../shared/METAQ.md`` section 1.7), big-endian:

=======  ====  ==============================================================
offset   size  field
=======  ====  ==============================================================
0        4     length: attribute part + payload
4        4     CRC32 & 0x7FFFFFFF of the attribute part and the payload
8        8     msgId
16       4     flag: bit 0 = has attribute
20       4+n   attribute part: attrLen, then attr (only with bit 0)
..             payload
=======  ====  ==============================================================

so a record written by a ZeroMQ producer with a ``metaq.attribute`` header
reaches a MetaQ consumer with that attribute; one in a batch without
``metaq.id`` gets :func:`derived_msgid`.  A record's *MetaQ size* (20 +
attribute part + payload) is what a MetaQ consumer adds to its offset for
it (:mod:`hpbroker.text.offsets`).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from crc32c import crc32c

from hpbroker import batch as B

ID_HEADER = "metaq.id"
ATTR_HEADER = "metaq.attribute"
FLAG_HEADER = "metaq.flag"
MESSAGE_HEADER = 20
ATTRIBUTE_FLAG = 1

#: the headers of a batch's first record without attribute: [["metaq.id", bin 8]]
#: (fixarray 1, fixarray 2, fixstr 8, bin8 of 8), then the 8 id bytes
ID_ONLY_PREFIX = b"\x91\x92\xa8metaq.id\xc4\x08"
ID_ONLY_LEN = len(ID_ONLY_PREFIX) + 8

# the batch header of hpbroker/batch.py's table (64 bytes, little-endian)
_BATCH_HEADER = struct.Struct("<qIiB3xIHxxIqqqi4x")
assert _BATCH_HEADER.size == B.HEADER_SIZE
_U32 = struct.Struct("<I")
_MSG = struct.Struct(">iiqi")
_BE_I = struct.Struct(">i")
_BE_Q = struct.Struct(">q")


class BadMessage(ValueError):
    """A put whose body does not hold what its flag says (MetaQ status 400)."""


def split_attribute(body, flag: int):
    """(attribute or None, payload) of a put body: with flag bit 0 the body
    starts with a 4-byte big-endian attrLen and attrLen bytes of attribute."""
    if not flag & ATTRIBUTE_FLAG:
        return None, body
    if len(body) < 4:
        raise BadMessage(f"flag bit 0 (attribute) is set but the body has {len(body)} bytes, less than attrLen's 4")
    n = _BE_I.unpack_from(body, 0)[0]
    if n < 0 or 4 + n > len(body):
        raise BadMessage(f"attribute length {n} does not fit a body of {len(body)} bytes")
    return body[4:4 + n], body[4 + n:]


def build_batch(bodies: list, flags: list[int] | None, first_id: int, timestamp_ms: int) -> bytearray:
    """One hpbroker record batch from put bodies whose msgIds are
    ``first_id`` + i (``flags`` None: all 0, no attributes: the vectorised
    path).  Raises BadMessage (callers check bodies with split_attribute
    first, so it does not happen)."""
    n = len(bodies)
    table = np.zeros(n, dtype=B.ENTRY_DTYPE)
    table["key_len"] = -1
    id_blob = ID_ONLY_PREFIX + _BE_Q.pack(first_id)
    if flags is None:
        table["value_len"] = np.fromiter(map(len, bodies), dtype=np.int64, count=n)
        table["headers_len"][0] = ID_ONLY_LEN
        parts = [bodies[0], id_blob]
        parts += bodies[1:] if n > 1 else ()
    else:
        parts = []
        vl = table["value_len"]
        hl = table["headers_len"]
        for i, (body, flag) in enumerate(zip(bodies, flags)):
            attr, payload = split_attribute(body, flag)
            pairs = [(ID_HEADER, _BE_Q.pack(first_id))] if i == 0 else []
            if attr is not None:
                pairs.append((ATTR_HEADER, bytes(attr)))
            if flag & ~ATTRIBUTE_FLAG:
                pairs.append((FLAG_HEADER, _BE_I.pack(flag)))
            parts.append(payload)
            vl[i] = len(payload)
            if pairs:
                blob = B.encode_headers(pairs)
                parts.append(blob)
                hl[i] = len(blob)
    out = bytearray().join([bytes(B.HEADER_SIZE), table.tobytes(), *parts])
    _BATCH_HEADER.pack_into(out, 0, 0, len(out), 0, B.MAGIC, 0, 0, n, timestamp_ms, timestamp_ms, -1, -1)
    _U32.pack_into(out, B.CRC_AT, crc32c(memoryview(out)[B.CRC_START:]))
    return out


def put_sizes(bodies: list) -> np.ndarray:
    """The MetaQ size of each put: its header plus its whole body."""
    return np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies)) + MESSAGE_HEADER


class Batch:
    """One stored batch seen as MetaQ messages: where each record's parts
    are in ``buf`` and its MetaQ size, without decoding any payload."""

    __slots__ = ("buf", "pos", "header", "count", "sizes", "vstart", "vlen", "hstart", "hlen", "first_id", "plain")

    def __init__(self, buf, pos: int, header: B.BatchHeader):
        self.buf = buf
        self.pos = pos
        self.header = header
        self.count = header.record_count
        table, starts = B.value_bounds(buf, pos, header)
        klen = np.maximum(table["key_len"], 0).astype(np.int64)
        self.vlen = table["value_len"].astype(np.int64)
        self.hlen = table["headers_len"].astype(np.int64)
        self.vstart = starts + klen
        self.hstart = self.vstart + self.vlen
        self.sizes = self.vlen + MESSAGE_HEADER
        self.first_id = None  # the batch's msgIds start here (metaq.id on its first record)
        self.plain = True  # no record has an attribute or a flag: no header to read per record
        for i in np.flatnonzero(self.hlen).tolist():
            msg_id, attr, flag = self._headers(i)
            if i == 0:
                self.first_id = msg_id
            if attr is not None:
                self.sizes[i] += 4 + len(attr)
            if attr is not None or flag is not None or (i > 0 and msg_id is not None):
                self.plain = False

    def _headers(self, i: int):
        """(msgId or None, attribute or None, flag or None) of record ``i``."""
        s = int(self.hstart[i])
        pairs = B.decode_headers(memoryview(self.buf)[s:s + int(self.hlen[i])])
        msg_id = attr = flag = None
        for name, value in pairs:
            if name == ID_HEADER and msg_id is None and len(value) == 8:
                msg_id = _BE_Q.unpack(value)[0]
            elif name == ATTR_HEADER and attr is None:
                attr = value
            elif name == FLAG_HEADER and flag is None and len(value) == 4:
                flag = _BE_I.unpack(value)[0]
        return msg_id, attr, flag

    def messages(self, first: int, end: int, topic_key: int) -> list:
        """MetaQ's encoding of records [first, end), as a list of buffers to join."""
        mv = memoryview(self.buf)
        out = []
        base = self.header.base_offset
        vstart = self.vstart[first:end].tolist()
        vlen = self.vlen[first:end].tolist()
        if self.first_id is not None:
            ids = range(self.first_id + first, self.first_id + end)
        else:
            ids = [derived_msgid(topic_key, base + i) for i in range(first, end)]
        pack = _MSG.pack
        crc = zlib.crc32
        if self.plain:
            for s, n, msg_id in zip(vstart, vlen, ids):
                v = mv[s:s + n]
                out.append(pack(n, crc(v) & 0x7FFFFFFF, msg_id, 0))
                out.append(v)
            return out
        hlen = self.hlen.tolist()
        for k, (s, n, msg_id) in enumerate(zip(vstart, vlen, ids)):
            i = first + k
            v = mv[s:s + n]
            attr = flag = None
            if hlen[i]:
                own, attr, flag = self._headers(i)
                if own is not None and i > 0:
                    msg_id = own
            flag = (flag or 0) & ~ATTRIBUTE_FLAG
            if attr is None:
                out.append(pack(n, crc(v) & 0x7FFFFFFF, msg_id, flag))
            else:
                prefix = _BE_I.pack(len(attr)) + attr
                out.append(pack(len(prefix) + n, crc(v, crc(prefix)) & 0x7FFFFFFF, msg_id, flag | ATTRIBUTE_FLAG))
                out.append(prefix)
            out.append(v)
        return out


def topic_key(topic: str, partition: int) -> int:
    """The 22 bits of a partition's name that :func:`derived_msgid` uses."""
    return zlib.crc32(f"{topic}/{partition}".encode()) & 0x3FFFFF


def derived_msgid(key: int, offset: int) -> int:
    """The msgId a get shows for a record without a ``metaq.id`` header (one
    a ZeroMQ producer wrote): negative, so never a snowflake; 22 bits of the
    partition's name and 41 bits of the record offset, so unique within a
    partition's first 2**41 records and, across partitions, unless two
    partition names share those 22 bits."""
    return -1 - ((key << 41) | (offset & ((1 << 41) - 1)))
