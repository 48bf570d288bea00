"""Write and fsync failures: fail the waiting batches, never retry-and-ack.

EIO on fdatasync fences the partition (the fsyncgate lesson); ENOSPC on a
write fails the unacknowledged batches, rolls the log back and leaves it
writable.  Faults come from the injectable syscall layer and, for ENOSPC,
from a real 2 MiB tmpfs when mounting is permitted."""

from __future__ import annotations

import errno
import os

import pytest

from hpbroker.config import LogConfig
from hpbroker.io import DiskFull, FaultyFileSystem, GroupCommit, PartitionFenced, PartitionLog, Storage
from hpbroker.io.testing import make_batch, read_all

CFG = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, flush_batches=0, flush_bytes=0)


def contiguous_end(log):
    off = log.earliest_offset
    for h in read_all(log):
        assert h.base_offset == off
        off = h.last_offset + 1
    return off


def test_fsync_failure_fails_waiting_batches_and_fences(tmp_path):
    fs = FaultyFileSystem()
    with Storage(tmp_path, CFG, fs=fs) as st:
        logs = [st.partition("t", p) for p in range(2)]
        gc = GroupCommit(CFG)
        for lg in logs:
            gc.append(lg, make_batch(3), 0)
        assert gc.flush() == {("t", 0): 3, ("t", 1): 3}
        results = []
        for i in range(4):
            gc.append(logs[i % 2], make_batch(2), 0, callback=lambda e, b, l: results.append((e, b, l)))
        fs.fail("fdatasync", errno.EIO, path="t-0")
        res = gc.flush()
        assert isinstance(res[("t", 0)], PartitionFenced)
        assert isinstance(res[("t", 0)].cause, OSError) and res[("t", 0)].cause.errno == errno.EIO
        assert res[("t", 0)].partition == logs[0].dir
        assert res[("t", 1)] == 7  # the other partition is unaffected
        failed = [r for r in results if r[0] is not None]
        assert [(b, l) for _, b, l in failed] == [(3, 4), (5, 6)]  # both t-0 batches failed
        assert all(isinstance(e, PartitionFenced) for e, _, _ in failed)
        assert logs[0].high_watermark == 3  # nothing acked
        assert logs[0].fenced is not None
        with pytest.raises(PartitionFenced):
            logs[0].append(make_batch(1), 0)
        with pytest.raises(PartitionFenced):
            logs[0].flush()  # never retried, even though fsync would work now
        assert fs.calls["fdatasync"] >= 1
        assert read_all(logs[0])[-1].last_offset == 2  # reads stay up to what was durable
    # a restart recovers: the written-but-unsynced batches are still in the file
    log = PartitionLog(str(tmp_path / "t-0"), CFG)
    assert log.fenced is None and log.log_end_offset >= 3
    log.close()


def test_write_eio_fences(tmp_path):
    fs = FaultyFileSystem()
    with Storage(tmp_path, CFG, fs=fs) as st:
        log = st.partition("t", 0)
        gc = GroupCommit(CFG)
        gc.append(log, make_batch(1), 0)
        fs.fail("pwrite", errno.EIO)
        res = gc.flush()
        assert isinstance(res[("t", 0)], PartitionFenced)
        assert log.high_watermark == 0


def test_enospc_injected_rolls_back_and_recovers(tmp_path):
    fs = FaultyFileSystem()
    with Storage(tmp_path, CFG, fs=fs) as st:
        log = st.partition("t", 0)
        gc = GroupCommit(CFG)
        gc.append(log, make_batch(5, 300), 0)
        assert gc.flush()[("t", 0)] == 5
        errs = []
        for _ in range(3):
            gc.append(log, make_batch(2, 300), 0, callback=lambda e, b, l: errs.append(e))
        fs.fail("pwrite", errno.ENOSPC)
        res = gc.flush()
        assert isinstance(res[("t", 0)], DiskFull) and res[("t", 0)].rolled_back_to == 5
        assert len(errs) == 3 and all(isinstance(e, DiskFull) for e in errs)
        assert log.fenced is None and log.log_end_offset == 5 and log.high_watermark == 5
        # space is back: the next new append goes on from the acknowledged end
        base, last = gc.append(log, make_batch(1, 300), 0)
        assert base == 5
        assert gc.flush()[("t", 0)] == 6
        assert contiguous_end(log) == 6
    log = PartitionLog(str(tmp_path / "t-0"), CFG)
    assert log.log_end_offset == 6 and log.fenced is None
    log.close()


def test_enospc_in_append_when_the_staging_buffer_spills(tmp_path):
    fs = FaultyFileSystem()
    with Storage(tmp_path, CFG, fs=fs) as st:
        log = st.partition("t", 0)
        gc = GroupCommit(CFG)
        gc.append(log, make_batch(1, 1000), 0)
        gc.flush()
        errs = []
        gc.append(log, make_batch(1, 1000), 0, callback=lambda e, b, l: errs.append(e))
        fs.fail("pwrite", errno.ENOSPC)
        with pytest.raises(DiskFull):
            gc.append(log, make_batch(3, 40_000), 0)  # bigger than the free buffer: spills
        assert len(errs) == 1 and isinstance(errs[0], DiskFull)
        assert isinstance(gc.flush()[("t", 0)], DiskFull)  # reported to offset-comparing callers too
        assert log.log_end_offset == 1
        gc.append(log, make_batch(3, 40_000), 0)
        assert gc.flush()[("t", 0)] == 4
        assert contiguous_end(log) == 4


def test_enospc_on_a_real_full_filesystem(tmpfs):
    tiny_tmpfs = tmpfs("2m")
    ballast = tiny_tmpfs / "ballast"
    ballast.write_bytes(b"\xff" * (1 << 20))
    cfg = LogConfig(segment_bytes=1 << 20, write_buffer_bytes=1 << 16, flush_batches=4, flush_bytes=0)
    data = tiny_tmpfs / "data"
    st = Storage(data, cfg)
    try:
        log = st.partition("t", 0)
        gc = GroupCommit(cfg)
        acked = 0
        disk_full = None
        for i in range(200):  # ~4 MB into what is left of 2 MiB
            try:
                gc.append(log, make_batch(2, 10_000, tag=i), 0)
                if gc.due():
                    res = gc.flush()[("t", 0)]
                    if isinstance(res, DiskFull):
                        disk_full = res
                        break
                    assert isinstance(res, int)
                    acked = res
            except DiskFull as e:
                disk_full = e
                break
        assert disk_full is not None, "the 2 MiB tmpfs never filled"
        assert disk_full.cause.errno == errno.ENOSPC
        assert log.fenced is None
        assert log.log_end_offset == log.high_watermark == acked > 0
        assert contiguous_end(log) == acked
        ballast.unlink()  # space is freed
        for i in range(8):
            gc.append(log, make_batch(2, 10_000, tag=1000 + i), 0)
        res = gc.flush()[("t", 0)]
        assert res == acked + 16
        assert contiguous_end(log) == acked + 16
    finally:
        st.close()
    log = PartitionLog(str(data / "t-0"), cfg)
    assert log.fenced is None and log.log_end_offset == acked + 16
    log.close()


def test_an_index_fsync_failure_at_close_fences_nothing(tmp_path):
    # sweep-ioerror: EIO on the index file's fsync in close() fenced the partition, though indexes are derived data
    from hpbroker.io import layout

    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, index_interval_bytes=256)
    fs = FaultyFileSystem()
    log = PartitionLog(str(tmp_path / "t-0"), cfg, fs=fs)
    for i in range(20):
        log.append(make_batch(2, 100, tag=i), 0)
    log.flush()
    fs.fail("fsync", errno.EIO, skip=1)  # close: the .log's fsync, then the .index's
    log.close()  # no exception
    assert log.fenced is None and fs._rules[0].hits == 1
    assert not os.path.exists(tmp_path / "t-0" / layout.CHECKPOINT_NAME)  # so the next start rescans and rebuilds
    log = PartitionLog(str(tmp_path / "t-0"), cfg)
    try:
        assert log.fenced is None and log.log_end_offset == 40 and len(read_all(log)) == 20
    finally:
        log.close()
