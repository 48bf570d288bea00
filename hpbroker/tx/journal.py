"""The transaction journal: records of the internal topic ``__transactions``.

A transaction's batches and its decisions are appended, as ordinary record
batches, to partition ``crc32(txid) % N`` of ``__transactions`` through the
ordinary produce path (ring, writer, group commit, fdatasync; under sync
replication the slave's ack, since decisions go with acks=all).  So the
journal is written, recovered and replicated exactly as every partition is;
a promoted slave reads the same journal.  Its messages reach their own
partitions only at commit (MetaQ's design; docs/design.md, "Transactions").

One journal record per event, key = the txid (UTF-8), value = a msgpack
array whose first element is the kind:

======  ==========  =========================================================
kind    name        value
======  ==========  =========================================================
1       DATA        ``[1, topic, partition, batch]``: one record batch of the
                    transaction for that partition, byte for byte as the
                    producer built it (its CRC32C is the batch's own)
2       PREPARE     ``[2]``: the XA branch is prepared; it now waits for the
                    coordinator (or an operator) and never times out
3       COMMIT      ``[3, heuristic, [[topic, partition, scan_from], ...]]``:
                    committed.  ``scan_from``: the partition's high watermark
                    when the decision was taken; the batches are appended
                    after it, so recovery looks for them (by CRC) only there
4       ROLLBACK    ``[4, heuristic, reason]``: rolled back
5       APPLIED     ``[5]``: every batch of the committed transaction is
                    durable in its partition; recovery can forget it
6       COPY        ``[6]``: a copy of the transaction starts here: the DATA
                    records that follow (until COPIED) rebuild it
7       COPIED      ``[7, state, heuristic, scan_from, mark]``: the copy is whole;
                    from here on the transaction is the copy, in ``state``
                    (``prepared`` or ``committing``, with the COMMIT's
                    ``scan_from`` and ``mark``).  A copy without its COPIED (a crash in
                    between) is ignored: the records it copies are still
                    there
======  ==========  =========================================================

**The journal's size.**  ``__transactions`` expires by age
(``log.retention_ms``).  A transaction that waits long (a prepared XA branch
whose coordinator is gone, a commit whose appends keep failing) is copied
to the journal's end before half that age, so its records never expire;
``tx.checkpoint`` in each journal partition's directory holds the offset
below which no live transaction has records, where recovery starts reading.

A commit or prepare with its last batches writes them and the decision as
one journal batch: one write, one fdatasync, all or nothing.

**Marks.**  Appended at commit, batch ``i`` of a transaction's share of a
partition carries ``producer_id = mark`` and ``base_sequence = i`` (its CRC32C
recomputed), where ``mark = -(2 + journal partition * 2**53 + offset of the
COMMIT record)``: negative, so the writers' idempotence check leaves it alone
(only ids >= 0 are idempotent producers'), and unique to the transaction,
so recovery recognises exactly its batches, never another producer's
byte-identical ones.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterator, NamedTuple

import msgspec
from crc32c import crc32c

from hpbroker import batch

TOPIC = "__transactions"

DATA, PREPARE, COMMIT, ROLLBACK, APPLIED, COPY, COPIED = 1, 2, 3, 4, 5, 6, 7
KINDS = {DATA: "data", PREPARE: "prepare", COMMIT: "commit", ROLLBACK: "rollback", APPLIED: "applied", COPY: "copy",
         COPIED: "copied"}

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list)


class Entry(NamedTuple):
    """One decoded journal record."""

    offset: int
    txid: str
    kind: int
    body: list  # the value's elements after the kind
    ms: int = -1  # when it was written (its batch's timestamp, wall ms)


def partition_for(txid: str, partitions: int) -> int:
    """The ``__transactions`` partition journalling ``txid`` (and so which
    acceptor coordinates it)."""
    return zlib.crc32(txid.encode()) % partitions


def data(topic: str, partition: int, batch_bytes) -> bytes:
    return _enc.encode((DATA, topic, partition, batch_bytes))


def prepare() -> bytes:
    return _enc.encode((PREPARE,))


def commit(heuristic: bool, scan_from: list[tuple[str, int, int]]) -> bytes:
    return _enc.encode((COMMIT, heuristic, scan_from))


def rollback(heuristic: bool, reason: str) -> bytes:
    return _enc.encode((ROLLBACK, heuristic, reason))


def applied() -> bytes:
    return _enc.encode((APPLIED,))


def copy() -> bytes:
    return _enc.encode((COPY,))


def copied(state: str, heuristic: bool, scan_from: list[tuple[str, int, int]], mark: int = -1) -> bytes:
    return _enc.encode((COPIED, state, heuristic, scan_from, mark))


def mark_of(journal_partition: int, commit_offset: int) -> int:
    return -(2 + (journal_partition << 53) + commit_offset)


_PRODUCER = struct.Struct("<qi")
_CRC = struct.Struct("<I")


def mark_batch(b: bytes, mark: int, index: int) -> bytes:
    """``b`` as appended at commit: producer fields set to ``(mark, index)``,
    CRC32C recomputed."""
    out = bytearray(b)
    _PRODUCER.pack_into(out, 48, mark, index)
    _CRC.pack_into(out, 20, crc32c(memoryview(out)[24:]))
    return bytes(out)


def encode(txid: str, values: list[bytes], now_ms: int) -> bytearray:
    """One journal batch: ``values`` (the functions above) all for ``txid``."""
    key = txid.encode()
    return batch.encode_batch(values, [key] * len(values), timestamp_ms=now_ms)


def decode(data_bytes) -> Iterator[Entry]:
    """Every journal record of the whole batches in ``data_bytes``; records
    that are not ours (no key, not a msgpack array) are skipped."""
    mv = memoryview(data_bytes)
    for pos, h in batch.iter_batches(mv):
        table, starts = batch.value_bounds(mv, pos, h)
        for i, (s, k, v) in enumerate(zip(starts.tolist(), table["key_len"].tolist(), table["value_len"].tolist())):
            if k <= 0:
                continue
            try:
                txid = bytes(mv[s:s + k]).decode()
                value = _dec.decode(mv[s + k:s + k + v])
            except (msgspec.DecodeError, UnicodeDecodeError):
                continue
            if not value or value[0] not in KINDS:
                continue
            yield Entry(h.base_offset + i, txid, value[0], value[1:], h.first_timestamp)


def last_offset(data_bytes) -> int:
    """The offset after the last record of the whole batches in ``data_bytes``."""
    end = 0
    for _, h in batch.iter_batches(memoryview(data_bytes)):
        end = h.base_offset + h.record_count
    return end
