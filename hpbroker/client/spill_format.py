"""The spill journal's frames as bytes: the records and the acknowledgements.

:class:`~hpbroker.client.spill.SpillJournal` keeps the segment files, the
seqs and the acknowledgement flags; this module is what one frame of a
segment holds, written and read: :func:`encode_record` (the producer frames
each message in ``send()``), :func:`encode_ack`, :func:`parse_records` (the
read-back of every re-send), and :func:`scan_segment` with
:func:`decode_record` (opening, :mod:`~hpbroker.client.spill_open`).

Frames and records
------------------

Each segment is a sequence of :mod:`~hpbroker.client.framing` frames
(``[u32 length][u32 CRC32C of the length and the payload][payload]``).  A
payload starts with its kind.  Records (kind ``R``, or ``F``), integers
little-endian:

=======  ===========  ============  ==========================================
offset   size         field         notes
=======  ===========  ============  ==========================================
0        1            kind          ``0x52`` ``R``: a message, in send order;
                                    ``0x46`` ``F``: a message put back at
                                    ``close()`` (see "Order" in
                                    :mod:`hpbroker.client.spill`)
1        1            flags         bit 0: the message has a key; others zero
2        2            topic_len     uint16, bytes of the topic's UTF-8
4        4            partition     int32; -1: not chosen yet (no metadata
                                    when it was spilled; chosen at re-send by
                                    the producer's partitioner)
8        8            timestamp     int64, ms since the epoch (the send time)
16       4            key_len       uint32, 0 when there is no key
20       4            headers_len   uint32, 0 for no headers
24       topic_len    topic         UTF-8
..       key_len      key
..       headers_len  headers       the record headers bytes of the batch
                                    format (docs/protocol.md)
..       the rest     value         up to the end of the payload
=======  ===========  ============  ==========================================

Acknowledgements (kind ``A``): the records listed were acknowledged by the
broker (or failed for good) and are never re-sent:

=======  ==========  ============  ==========================================
offset   size        field         notes
=======  ==========  ============  ==========================================
0        1           kind          ``0x41`` ``A``
1        3           reserved      zero
4        4           count         uint32, >= 1
8        8           base          int64, a seq
16       4 x count   deltas        uint32 each: seq = base + delta
=======  ==========  ============  ==========================================
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
from crc32c import crc32c

from hpbroker.client import framing
from hpbroker.client.framing import FRAME_HEADER, MAX_FRAME, FrameScan, JournalCorrupt

KIND_RECORD = 0x52  # "R"
KIND_FRONT = 0x46  # "F"
KIND_ACK = 0x41  # "A"

_REC = struct.Struct("<BBHiqII")
_ACK = struct.Struct("<B3xIq")
_LEN = struct.Struct("<I")


class SpillRecord(NamedTuple):
    """One spilled message as the journal holds it."""

    seq: int
    topic: str
    partition: int  # -1: not chosen yet
    key: bytes | None
    value: bytes
    headers: bytes | None  # the batch format's encoded headers
    timestamp: int  # ms since the epoch
    front: bool = False  # an F record: goes before its partition's R records


def record_size(topic: bytes, key: bytes | None, value: bytes, headers: bytes | None) -> int:
    """The bytes one record takes in a segment, frame included."""
    return FRAME_HEADER + _REC.size + len(topic) + (0 if key is None else len(key)) + len(value) + \
        (0 if headers is None else len(headers))


_topic_bytes: dict[str, bytes] = {}


def encode_record(front: bool, topic: str, partition: int, key: bytes | None, value: bytes, headers: bytes | None,
                  timestamp: int) -> bytes:
    """One record frame (the tables above).  ValueError for a topic or a
    message that does not fit one."""
    tb = _topic_bytes.get(topic)
    if tb is None:
        tb = topic.encode("utf-8")
        if len(tb) > 0xFFFF:
            raise ValueError(f"topic name of {len(tb)} bytes does not fit a spill record")
        if len(_topic_bytes) < 4096:
            _topic_bytes[topic] = tb
    hl = 0 if headers is None else len(headers)
    if key is None:
        payload = b"".join((_REC.pack(KIND_FRONT if front else KIND_RECORD, 0, len(tb), partition, timestamp, 0, hl),
                            tb, headers or b"", value))
    else:
        payload = b"".join((_REC.pack(KIND_FRONT if front else KIND_RECORD, 1, len(tb), partition, timestamp,
                                      len(key), hl), tb, key, headers or b"", value))
    n = len(payload)
    if n > MAX_FRAME:
        raise ValueError(f"a message of {n} bytes is larger than a spill frame may be")
    head = _LEN.pack(n)
    return b"".join((head, _LEN.pack(crc32c(payload, crc32c(head))), payload))


def encode_ack(seqs) -> bytes:
    """One acknowledgement frame for ``seqs`` (two for a range wider than a uint32)."""
    arr = np.asarray(seqs, dtype=np.int64)
    base = int(arr.min())
    deltas = arr - base
    if int(deltas.max()) > 0xFFFFFFFF:  # split a range wider than a uint32 (never in practice)
        cut = arr < base + 0xFFFFFFFF
        return encode_ack(arr[cut]) + encode_ack(arr[~cut])
    return framing.frame(_ACK.pack(KIND_ACK, len(arr), base) + deltas.astype("<u4").tobytes())


def parse_records(buf: bytes, start: int, pos, seg, out: list, got: int, max_bytes: int,
                  names: dict[bytes, str]) -> tuple[int, int]:
    """The frames of ``buf`` from index ``start`` (at ``pos`` in the
    file): unacknowledged R records appended to ``out``; returns (the
    index after the last whole frame used, bytes of records so far).
    ``pos`` is the :class:`~hpbroker.client.spill.ReadPosition` (its
    ``seq`` moves on past every record frame), ``seg`` the segment,
    ``names`` the journal's topic names by their bytes.  The per-record
    path of every re-send, so it is written flat: bytes slices of ``buf``,
    no call per record.  The CRCs are not checked again: every frame was
    checked at open or written by this process (checking them here cost
    about a sixth of a re-send's CPU)."""
    n = len(buf)
    at = start
    head = _LEN.unpack_from
    rec = _REC.unpack_from
    acked = seg.acked
    base = seg.base
    new = tuple.__new__
    while at + FRAME_HEADER <= n:
        length = head(buf, at)[0]
        end = at + FRAME_HEADER + length
        if end > n:
            break
        if length < 1 or length < _REC.size and buf[at + FRAME_HEADER] != KIND_ACK:
            raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos.offset + at - start} "
                                 f"has a length ({length}) no record can have")
        kind = buf[at + FRAME_HEADER]
        if kind == KIND_RECORD or kind == KIND_FRONT:
            seq = pos.seq
            pos.seq = seq + 1
            if kind == KIND_RECORD and not acked[seq - base]:
                o = at + FRAME_HEADER
                _, flags, tl, partition, ts, kl, hl = rec(buf, o)
                o += _REC.size
                if o + tl + kl + hl > end or flags & ~1:
                    raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos.offset + at - start} "
                                         "has a good CRC but its record does not parse (its lengths do not add up)")
                tb = buf[o : o + tl]
                topic = names.get(tb)
                if topic is None:
                    topic = names[tb] = topic_name(tb, seg, pos.offset + at - start)
                o += tl
                key = buf[o : o + kl] if flags else None
                o += kl
                headers = buf[o : o + hl] if hl else None
                out.append(new(SpillRecord, (seq, topic, partition, key, buf[o + hl : end], headers, ts, False)))
                got += length
        at = end
        if got >= max_bytes and out:
            break
    return at, got


def topic_name(tb: bytes, seg, offset: int) -> str:
    """``tb`` decoded; JournalCorrupt naming ``seg``'s file and ``offset`` when it is not UTF-8."""
    try:
        return tb.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {offset} has a good CRC but its "
                             f"topic is not UTF-8 ({e})") from None


def decode_record(p: memoryview, seq: int, seg, offset: int, names: dict[bytes, str]) -> SpillRecord:
    """The record frame payload ``p`` (record ``seq``, at ``offset`` of ``seg``) as a SpillRecord."""
    try:
        kind, flags, tl, partition, ts, kl, hl = _REC.unpack_from(p, 0)
        o = _REC.size
        if o + tl + kl + hl > len(p) or flags & ~1 or (kl and not flags & 1):
            raise ValueError("its lengths do not add up")
        tb = bytes(p[o : o + tl])
        topic = names.get(tb)
        if topic is None:
            topic = names[tb] = tb.decode("utf-8")
        o += tl
        key = bytes(p[o : o + kl]) if flags & 1 else None
        o += kl
        headers = bytes(p[o : o + hl]) if hl else None
        o += hl
        return SpillRecord(seq, topic, partition, key, bytes(p[o:]), headers, ts, kind == KIND_FRONT)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {offset} has a good CRC but its "
                             f"record does not parse ({e}); written by another version?") from None


def key_of(p: memoryview, seg, pos: int, names: dict[bytes, str]) -> tuple[str, int]:
    """The (topic, partition) of the record frame payload ``p``; JournalCorrupt
    naming ``seg``'s file and ``pos`` when it does not parse."""
    try:
        _, flags, tl, partition, _, kl, hl = _REC.unpack_from(p, 0)
        if _REC.size + tl + kl + hl > len(p) or flags & ~1:
            raise ValueError("its lengths do not add up")
        tb = bytes(p[_REC.size : _REC.size + tl])
        topic = names.get(tb)
        if topic is None:
            topic = names[tb] = tb.decode("utf-8")
        return topic, partition
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos} has a good CRC but its "
                             f"record does not parse ({e}); written by another version?") from None


def scan_segment(buf: bytes, seg, last: bool, key_ids: dict, first_at: list, fronts: list, acks: list,
                 names: dict[bytes, str]) -> tuple[FrameScan, list[int]]:
    """Opening: check every frame of ``buf`` (the whole segment ``seg``;
    ``last``: a torn tail may be cut) and parse it.  Each record's
    (topic bytes, partition) gets a small id in ``key_ids`` (the segment
    and offset it was first seen at in ``first_at``), the ``F`` records
    are decoded into ``fronts``, each acknowledgement frame's seqs appended
    to ``acks``.  Returns the scan (where the valid frames end, and why)
    and the key id of each record frame, in seq order."""
    ids = []
    scan = FrameScan(buf, f"spill journal {seg.path}", tail_ok=last)
    rec = _REC.unpack_from
    for pos, payload in scan:
        kind = payload[0]
        if kind == KIND_RECORD or kind == KIND_FRONT:
            try:
                _, flags, tl, partition, _, kl, hl = rec(buf, pos + FRAME_HEADER)
            except struct.error:
                flags = -1
            o = pos + FRAME_HEADER + _REC.size
            if flags & ~1 or o + tl + kl + hl > pos + FRAME_HEADER + len(payload):
                key_of(payload, seg, pos, names)  # raises, saying what is wrong
            k = (buf[o : o + tl], partition)
            kid = key_ids.get(k)
            if kid is None:
                kid = key_ids[k] = len(key_ids)
                first_at.append((seg, pos))
            ids.append(kid)
            if kind == KIND_FRONT:
                fronts.append(decode_record(payload, seg.base + len(ids) - 1, seg, pos, names))
        elif kind == KIND_ACK and len(payload) >= _ACK.size:
            _, count, abase = _ACK.unpack_from(payload, 0)
            if len(payload) != _ACK.size + 4 * count:
                raise JournalCorrupt(f"spill journal {seg.path}: the acknowledgement frame at offset {pos} "
                                     "has a good CRC but the wrong size")
            acks.append(abase + np.frombuffer(payload, dtype="<u4", offset=_ACK.size).astype(np.int64))
        else:
            raise JournalCorrupt(f"spill journal {seg.path}: the frame at offset {pos} has a good CRC but an "
                                 f"unknown kind {kind:#04x}; written by another version?")
    return scan, ids
