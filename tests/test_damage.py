"""Telling a torn write from damage after writing (hpbroker/io/bitflip.py,
hpbroker/io/damage.py), and the leader-epoch checkpoint's own damage."""

from __future__ import annotations

import os

from crc32c import crc32c
from hypothesis import given, settings, strategies as st

from hpbroker.config import LogConfig
from hpbroker.io import PartitionLog
from hpbroker.io.bitflip import single_bit_error
from hpbroker.io.damage import unwritten_piece
from hpbroker.io.epochs import NAME, EpochCache, read_entries
from hpbroker.io.testing import make_batch


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), where=st.integers(0, 1 << 30), bit=st.integers(0, 7))
def test_the_syndrome_of_one_flipped_bit_names_that_bit(data, where, bit):
    i = where % len(data)
    flipped = bytearray(data)
    flipped[i] ^= 1 << bit
    assert single_bit_error(crc32c(data) ^ crc32c(bytes(flipped)), len(data)) == (i, bit)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=2, max_size=3000), a=st.integers(0, 1 << 30), b=st.integers(0, 1 << 30))
def test_two_flipped_bits_are_not_one(data, a, b):
    i, j = a % (8 * len(data)), b % (8 * len(data))
    if i == j:
        return
    flipped = bytearray(data)
    flipped[i // 8] ^= 1 << (i % 8)
    flipped[j // 8] ^= 1 << (j % 8)
    assert single_bit_error(crc32c(data) ^ crc32c(bytes(flipped)), len(data)) is None


def test_a_zero_sector_piece_is_found_at_any_alignment():
    data = bytearray(b"\x01" * 3000)
    assert unwritten_piece(bytes(data), 100) is None
    data[412:924] = bytes(512)  # the file's sector [512, 1024) when the batch starts at 100
    assert unwritten_piece(bytes(data), 100) == 412
    tail = bytearray(b"\x01" * 1000)
    tail[-5:] = bytes(5)  # the batch ends 5 bytes into a sector that never arrived
    assert unwritten_piece(bytes(tail), 1024 - 995) == 995


def test_a_damaged_epoch_checkpoint_is_rebuilt_from_the_batch_headers(tmp_path, caplog):
    d = tmp_path / "t-0"
    log = PartitionLog(str(d), LogConfig(segment_bytes=1 << 16))
    for i, epoch in enumerate([3, 3, 1027, 1027, 2051]):
        log.append(make_batch(2, 40000, tag=i), epoch)  # 80 KB batches: one segment each
    log.close()
    (d / NAME).write_bytes(b"hpbroker-epochs 1\n3 0\n10\xff27 4\n")
    assert read_entries(str(d)) is None
    with caplog.at_level("WARNING", logger="hpbroker.io"):
        cache = EpochCache(str(d), 10)
    assert cache.entries == [(3, 0), (1027, 4), (2051, 8)]
    assert "rebuilt" in caplog.text
    assert read_entries(str(d)) == [(3, 0), (1027, 4), (2051, 8)]  # and written back
    os.unlink(d / NAME)
    assert read_entries(str(d)) == []


def test_an_index_entry_that_points_at_another_batch_is_not_followed(tmp_path):
    # a flipped index position that lands on a later batch boundary made reads skip the batches between
    import struct

    from hpbroker import batch as B
    from hpbroker.io import PartitionReader
    from hpbroker.io import layout

    d = tmp_path / "t-0"
    cfg = LogConfig(segment_bytes=1 << 20, index_interval_bytes=1)
    log = PartitionLog(str(d), cfg)
    for i in range(20):
        log.append(make_batch(1, 100, tag=i), 0)
    log.close()
    path = layout.index_path(str(d), 0)
    raw = bytearray(open(path, "rb").read())
    rel5, pos5 = struct.unpack_from("<II", raw, 4 * 8)
    _, pos6 = struct.unpack_from("<II", raw, 5 * 8)
    struct.pack_into("<II", raw, 4 * 8, rel5, pos6 - 1 + 1)  # entry for offset 5 now points at batch 6
    raw = raw[: 5 * 8]  # (and the entries after it go, so the file still ascends)
    open(path, "wb").write(bytes(raw))
    with PartitionReader(str(d)) as r:
        data = r.read(5, 1 << 20, 20)
        assert B.peek_base_offset(data) == 5
    log = PartitionLog(str(d), cfg)  # the writer's trusted index below the recovery point, loaded from the file
    try:
        assert B.peek_base_offset(log.read(5, 1 << 20)) == 5
    finally:
        log.close()


def _two_epochs(d):
    from hpbroker.io.epochs import EpochCache

    d.mkdir(parents=True)
    epochs = EpochCache(str(d), 0)
    log = PartitionLog(str(d), LogConfig(segment_bytes=1 << 16, index_interval_bytes=256))
    for i in range(60):
        epoch = 1 if i < 30 else 1025
        if epoch > epochs.latest_epoch:
            epochs.assign(epoch, log.log_end_offset)
        log.append(make_batch(1, 300, ts=1000 + i, tag=i), epoch)
    log.flush()
    return log


def test_an_epoch_flipped_to_another_epoch_of_the_partition_is_caught(tmp_path):
    # sweep-bitflip: 1 <-> 1025 is one bit (10); the scan only asked "is it a known epoch"
    from hpbroker import batch as B
    from hpbroker.io import layout

    d = tmp_path / "t-0"
    _two_epochs(d)._writer.close()
    path = layout.log_path(str(d), layout.list_segments(str(d))[-1])
    data = open(path, "rb").read()
    pos = [p for p, h in B.iter_batches(data) if h.batch_length >= B.HEADER_SIZE][5]
    assert B.peek_epoch(data, pos) in (1, 1025)
    with open(path, "r+b") as f:
        f.seek(pos + B.EPOCH_AT + 1)
        f.write(bytes([data[pos + B.EPOCH_AT + 1] ^ 0x04]))
    log = PartitionLog(str(d), LogConfig(segment_bytes=1 << 16))
    try:
        assert log.fenced is not None and "leader-epoch checkpoint has offset" in str(log.fenced)
    finally:
        log.close()


def test_a_damaged_time_index_is_found_and_removed_so_timestamp_lookups_stay_right(tmp_path):
    # sweep-bitflip: a flipped timestamp made the loader keep only the entries before it, and the
    # reader then skipped the segment as if its newest batch were older than it is
    import struct

    from hpbroker.io import PartitionReader, layout
    from hpbroker.io.scrub import Scrubber

    d = tmp_path / "t-0"
    log = _two_epochs(d)
    log.roll()
    log.close()
    base = layout.list_segments(str(d))[0]
    tpath = layout.timeindex_path(str(d), base)
    raw = bytearray(open(tpath, "rb").read())
    assert len(raw) >= 36
    ts = struct.unpack_from("<q", raw, 12)[0]
    struct.pack_into("<q", raw, 12, ts | (1 << 62))  # entry 1: out of order now
    open(tpath, "wb").write(bytes(raw))
    with PartitionReader(str(d)) as r:
        end = 60
        want = 1000 + 25  # the batch written at ts 1025 is offset 25, in the first segment
        found = Scrubber(str(tmp_path), 0, 3600).run_pass()
        assert [f.kind for f in found] == ["index"] and not os.path.exists(tpath)
        assert r.offset_for_timestamp(want, end) == 25
