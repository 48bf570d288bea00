"""The segmented log: round trips, rolls, indexes, reader, retention, group commit."""

from __future__ import annotations

import gzip
import os
import threading

import pytest

from hpbroker.config import LogConfig
from hpbroker.io import FaultyFileSystem, GroupCommit, OffsetOutOfRange, PartitionLog, PartitionReader, Storage
from hpbroker.io import layout
from hpbroker.io.offset_index import OffsetIndex
from hpbroker.io.testing import batches, make_batch, read_all

SMALL = LogConfig(segment_bytes=1 << 16, index_interval_bytes=512, write_buffer_bytes=1 << 16)


def fill(log, n_batches, records=3, size=100, ts0=1_000, epoch=7):
    bufs = []
    for i in range(n_batches):
        b = make_batch(records + i % 5, size, ts=ts0 + i, tag=i)
        bufs.append(b)
        log.append(memoryview(b).toreadonly(), epoch)
    log.flush()
    return bufs


def check_contiguous(hs, start=0):
    off = start
    for h in hs:
        assert h.base_offset == off
        off = h.last_offset + 1
    return off


def test_append_read_round_trip_across_rolls(tmp_path):
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 0)
        bufs = fill(log, 400)
        assert len(log.segments()) > 3
        assert log.high_watermark == log.log_end_offset
        hs = read_all(log)
        assert len(hs) == 400
        assert check_contiguous(hs) == log.log_end_offset
        assert all(h.leader_epoch == 7 for h in hs)
        # bytes equal to what the producer sent, apart from the stamped fields
        data = log.read(0, 1 << 30)
        first = bytes(data[: len(bufs[0])])
        assert first[16:] == bufs[0][16:] and first[8:12] == bufs[0][8:12]
        # every offset finds the batch holding it
        for off in (0, 1, 2, 3, 100, 517, log.log_end_offset - 1):
            h = batches(log.read(off, 1))[0]
            assert h.base_offset <= off <= h.last_offset
        assert log.read(log.log_end_offset, 100) == b""


def test_read_limits_whole_batches_at_least_one(tmp_path):
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 0)
        fill(log, 20)
        one = log.read(0, 1)
        assert len(batches(one)) == 1
        some = log.read(0, 3 * len(one))
        assert 1 <= len(batches(some)) <= 3 and len(some) <= 3 * len(one)


def test_reopen_reads_and_continues(tmp_path):
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 1)
        fill(log, 150)
        end = log.log_end_offset
    with Storage(tmp_path, SMALL) as st:
        assert st.partitions() == [("t", 1)]
        log = st.partition("t", 1)
        assert log.log_end_offset == end and log.high_watermark == end and log.fenced is None
        fill(log, 10)
        assert check_contiguous(read_all(log)) == log.log_end_offset


def test_unclean_reopen_rebuilds_indexes(tmp_path):
    st = Storage(tmp_path, SMALL)
    log = st.partition("t", 0)
    fill(log, 300)
    d, end = log.dir, log.log_end_offset
    expect = [(s.base, list(s.index.rel), list(s.index.pos)) for s in log.segments()]
    # the rolls' index rewrites and checkpoints run on the storage thread: let them finish (a
    # thread still writing recovery-point.tmp beside the reopen below is not a dead process)
    st.wait_background()
    # no close: the process "dies"; then wipe every index file
    for n in os.listdir(d):
        if n.endswith((".index", ".timeindex")):
            os.unlink(os.path.join(d, n))
    log2 = PartitionLog(d, SMALL)
    assert log2.log_end_offset == end and log2.fenced is None
    got = [(s.base, list(s.index.rel), list(s.index.pos)) for s in log2.segments()]
    assert got == expect
    for s in log2.segments():
        assert list(OffsetIndex.load(s.index_path).rel) == list(s.index.rel)
    assert check_contiguous(read_all(log2)) == end
    log2.close()


def test_offset_for_timestamp(tmp_path):
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 0)
        fill(log, 300, ts0=10_000)
        hs = read_all(log)
        for i in (0, 1, 57, 150, 299):
            want = hs[i].base_offset
            assert log.offset_for_timestamp(10_000 + i) == want
        assert log.offset_for_timestamp(0) == 0
        assert log.offset_for_timestamp(10_000 + 300) is None
        r = PartitionReader(log.dir)
        for i in (0, 57, 299):
            assert r.offset_for_timestamp(10_000 + i, log.high_watermark) == hs[i].base_offset
        r.close()


def test_reader_never_passes_high_watermark_and_sees_new_segments(tmp_path):
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 0)
        r = PartitionReader(log.dir)
        fill(log, 50)
        hw = log.high_watermark
        for b in range(20):  # staged and even written, but not committed
            log.append(make_batch(2, tag=b), 1)
        log.write()
        assert log.synced_offset == hw
        hs = read_all(r, hw=hw)
        assert check_contiguous(hs) == hw
        assert r.read(hw, 1 << 20, hw) == b""
        # a cut in the middle of a batch: the batch holding hw-1 is excluded if it reaches hw
        mid = hs[-1].base_offset + 1 if hs[-1].record_count > 1 else hs[-1].base_offset
        assert all(h.last_offset < mid for h in read_all(r, hw=mid))
        log.flush()
        fill(log, 300)
        assert check_contiguous(read_all(r, hw=log.high_watermark)) == log.high_watermark
        r.close()


def test_reader_survives_retention_and_lagging_index(tmp_path):
    cfg = LogConfig(segment_bytes=1 << 16, index_interval_bytes=512, write_buffer_bytes=1 << 16,
                    retention_bytes=3 << 16, retention_ms=-1)
    with Storage(tmp_path, cfg) as st:
        log = st.partition("t", 0)
        fill(log, 400)
        r = PartitionReader(log.dir)
        r.refresh()
        st.wait_background()  # retention skips a segment whose roll is still finishing
        st.apply_retention()
        first = log.earliest_offset
        assert first > 0
        with pytest.raises(OffsetOutOfRange):
            r.read(0, 100, log.high_watermark)
        assert read_all(r, start=first, hw=log.high_watermark)[0].base_offset == first
        # a damaged index (entries pointing nowhere sensible) is only a hint
        seg = log.segments()[-1]
        with open(seg.index_path, "wb") as f:
            f.write(OffsetIndex.from_bytes(b"").to_bytes())
            import struct
            f.write(struct.pack("<II", 1, 7))
        assert check_contiguous(read_all(r, start=seg.base, hw=log.high_watermark), seg.base) == log.high_watermark
        r.close()


def test_retention_by_age_and_size(tmp_path):
    now = [1_000_000.0]
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=60_000)
    with Storage(tmp_path, cfg, clock=lambda: now[0]) as st:
        log = st.partition("t", 0)
        fill(log, 400, ts0=1_000_000_000)  # ms timestamps ~ clock 1e6 s
        st.wait_background()  # the last roll's indexes (retention skips a segment until then)
        nseg = len(log.segments())
        assert nseg > 2
        assert st.apply_retention(now_ms=1_000_000_000 + 30_000) == {}
        deleted = st.apply_retention(now_ms=1_000_000_000 + 10**6)
        assert len(deleted[("t", 0)]) == nseg - 1  # all closed ones; never the active
        assert len(log.segments()) == 1
        assert not os.path.exists(layout.log_path(log.dir, 0))
        assert check_contiguous(read_all(log, start=log.earliest_offset), log.earliest_offset) == log.log_end_offset
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=-1, retention_bytes=2 << 16)
    with Storage(tmp_path / "b", cfg) as st:
        log = st.partition("t", 0)
        fill(log, 300)
        st.wait_background()
        st.apply_retention()
        assert sum(s.size for s in log.segments()) <= 2 << 16
        assert len(log.segments()) >= 2


class GatedFS(FaultyFileSystem):
    """Holds every ``op`` ("unlink" or "rename") of a path ending in
    ``suffix`` until ``gate`` is set, and records which threads made them."""

    def __init__(self, op: str, suffix: str, thread: str | None = None):
        super().__init__()
        self.op, self.suffix, self.thread = op, suffix, thread
        self.gate = threading.Event()
        self.held = threading.Event()  # set once an op is being held
        self.threads: set[str] = set()

    def _hold(self, op: str, path: str) -> None:
        if op == self.op and path.endswith(self.suffix) and self.thread in (None, threading.current_thread().name):
            self.threads.add(threading.current_thread().name)
            self.held.set()
            assert self.gate.wait(10)

    def unlink(self, path):
        self._hold("unlink", path)
        super().unlink(path)

    def rename(self, src, dst):
        self._hold("rename", src)
        super().rename(src, dst)


def test_a_roll_finishes_its_indexes_and_checkpoint_off_the_callers_thread(tmp_path):
    """The roll returns before the old segment's index fsyncs and the
    checkpoint; until they are done the old recovery point stands and
    retention leaves the segment alone; then both land, in that order."""
    from hpbroker.io import checkpoint

    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, index_interval_bytes=512,
                    retention_ms=-1, retention_bytes=0)
    fs = GatedFS("rename", layout.CHECKPOINT_NAME + ".tmp")  # each checkpoint's rename
    st = Storage(tmp_path, cfg, fs=fs)
    log = st.partition("t", 0)
    log.append(memoryview(make_batch(3, 100, ts=1, tag=0)).toreadonly(), 7)
    log.flush()
    while len(log.segments()) < 2:  # returns with the roll's checkpoint held
        log.append(memoryview(make_batch(40, 100, ts=2, tag=1)).toreadonly(), 7)
        log.flush()
    old, active = log.segments()
    assert old.finishing
    assert checkpoint.read(log.dir) == 0  # not moved past indexes that are not synced yet
    assert st.apply_retention() == {}  # retention_bytes=0 would take it, but not while finishing
    assert fs.held.wait(10)
    assert fs.threads == {"hpbroker-storage"}
    fs.gate.set()
    st.wait_background()
    assert not old.finishing
    assert checkpoint.read(log.dir) == active.base
    assert OffsetIndex.load(old.index_path).rel.tolist() == old.index.rel.tolist() and len(old.index)
    assert st.apply_retention() == {("t", 0): [old.base]}
    st.close()


def test_truncation_waits_for_a_finishing_roll(tmp_path):
    """A slave cutting a divergent tail must not see a roll's late checkpoint
    land past the cut (recovery would trust offsets that are gone)."""
    from hpbroker.io import checkpoint

    fs = GatedFS("rename", layout.CHECKPOINT_NAME + ".tmp", thread="hpbroker-storage")  # only the roll's
    st = Storage(tmp_path, SMALL, fs=fs)
    log = st.partition("t", 0)
    while len(log.segments()) < 2:
        log.append(memoryview(make_batch(40, 100, ts=2, tag=1)).toreadonly(), 7)
        log.flush()
    active = log.segments()[-1].base
    cut = max(h.base_offset for h in read_all(log) if h.base_offset < active)  # inside the rolled segment
    errors = []

    def truncate():
        try:
            st.truncate("t", 0, cut)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=truncate)
    t.start()
    t.join(0.3)
    assert t.is_alive()  # waiting for the background thread
    fs.gate.set()
    t.join(10)
    assert not t.is_alive() and not errors, errors
    log = st.partition("t", 0)
    assert log.log_end_offset == cut
    assert checkpoint.read(log.dir) <= cut
    st.close()


class CutRecorder(FaultyFileSystem):
    """Records every ftruncate (path, new size, thread) and unlink."""

    def __init__(self):
        super().__init__()
        self.cuts: list[tuple[str, int, str]] = []
        self.unlinked: list[str] = []

    def ftruncate(self, fd, length):
        self.cuts.append((self._paths.get(fd), length, threading.current_thread().name))
        super().ftruncate(fd, length)

    def unlink(self, path):
        self.unlinked.append(path)
        super().unlink(path)


def test_remove_gradually_cuts_from_the_end_then_unlinks(tmp_path):
    from hpbroker.io.retention import remove_gradually

    p = str(tmp_path / "big.log.deleted")
    size = 5 * 4096 + 100
    with open(p, "wb") as f:
        f.write(b"x" * size)
    fs, slept = CutRecorder(), []
    remove_gradually(fs, p, 4096, 0.005, sleep=slept.append)
    assert [n for _, n, _ in fs.cuts] == [size - 4096 * k for k in range(1, 6)]  # ends at 100 bytes
    assert slept == [0.005] * 5
    assert fs.unlinked == [p] and not os.path.exists(p)
    with open(p, "wb") as f:
        f.write(b"x" * size)
    fs = CutRecorder()
    remove_gradually(fs, p, 0, 0.005, sleep=slept.append)  # 0: unlink at once
    assert fs.cuts == [] and fs.unlinked == [p] and not os.path.exists(p)


@pytest.mark.parametrize("policy", ["delete", "archive"])
def test_retention_removes_segments_in_cuts_on_the_background_thread(tmp_path, policy):
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=-1, retention_bytes=0,
                    retention_policy=policy, delete_chunk_bytes=1 << 13, delete_chunk_pause_ms=0)
    fs = CutRecorder()
    with Storage(tmp_path, cfg, fs=fs) as st:
        log = st.partition("t", 0)
        fill(log, 400)
        st.wait_background()  # retention skips a segment whose roll is still finishing
        deleted = st.apply_retention()[("t", 0)]
        st.wait_background()
    assert deleted
    suffix = layout.ARCHIVING_SUFFIX if policy == "archive" else layout.DELETED_SUFFIX
    for base in deleted:
        path = layout.log_path(log.dir, base) + suffix
        cuts = [(n, t) for p, n, t in fs.cuts if p == path]
        assert len(cuts) >= 3 and all(t == "hpbroker-storage" for _, t in cuts)
        sizes = [n for n, _ in cuts]
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] <= 1 << 13
        assert path in fs.unlinked and not os.path.exists(path)


@pytest.mark.parametrize("policy", ["delete", "archive"])
def test_a_deleted_segment_stays_readable_for_delete_delay_ms_then_goes(tmp_path, policy):
    """Kafka's file.delete.delay.ms: a fetch that opened the segment just
    before retention took it keeps reading whole batches; only after the
    delay is the file archived (archive policy), cut down and unlinked."""
    now = [1000.0]
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=-1, retention_bytes=0,
                    delete_delay_ms=5000, delete_chunk_bytes=1 << 12, delete_chunk_pause_ms=0,
                    retention_policy=policy, archive_dir=str(tmp_path / "arch"))
    st = Storage(tmp_path, cfg, clock=lambda: now[0])
    log = st.partition("t", 0)
    fill(log, 400)
    st.wait_background()
    hw = log.high_watermark
    r = PartitionReader(log.dir)
    before = r.read(0, 1 << 20, hw)  # opens segment 0
    assert before and check_contiguous(batches(before)) > 0
    deleted = st.apply_retention()[("t", 0)]
    assert 0 in deleted
    gone = layout.log_path(log.dir, 0) + (layout.ARCHIVING_SUFFIX if policy == "archive" else layout.DELETED_SUFFIX)
    original = open(gone, "rb").read()
    st.wait_background()
    assert os.path.exists(gone) and os.path.getsize(gone) >= len(before)
    assert r.read(0, 1 << 20, hw) == before  # the open reader is not cut short
    now[0] += 4.9
    st.remove_due()
    st.wait_background()
    assert os.path.exists(gone)
    now[0] += 0.2
    st.remove_due()
    st.wait_background()
    assert not os.path.exists(gone)
    assert not [n for n in os.listdir(log.dir) if n.endswith((layout.DELETED_SUFFIX, layout.ARCHIVING_SUFFIX))]
    if policy == "archive":
        gz = tmp_path / "arch" / "t-0" / (layout.segment_name(0) + ".log.gz")
        assert gzip.decompress(gz.read_bytes()) == original
    r.close()
    st.close()


def test_close_removes_what_waits_for_delete_delay_ms(tmp_path):
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=-1, retention_bytes=0,
                    delete_delay_ms=3_600_000)
    st = Storage(tmp_path, cfg)
    log = st.partition("t", 0)
    fill(log, 200)
    st.wait_background()
    assert st.apply_retention()[("t", 0)]
    assert [n for n in os.listdir(log.dir) if n.endswith(layout.DELETED_SUFFIX)]
    st.close()
    assert not [n for n in os.listdir(log.dir) if n.endswith(layout.DELETED_SUFFIX)]


def test_retention_archive(tmp_path):
    """The archive policy: segments leave the log at once; the gzip runs on
    the background thread; each .log goes only once its copy is durable."""
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=-1, retention_bytes=0,
                    retention_policy="archive", archive_dir=str(tmp_path / "arch"))
    fs = GatedFS("rename", ".gz.tmp")  # each archive's final rename
    st = Storage(tmp_path / "data", cfg, fs=fs)
    log = st.partition("t", 3)
    fill(log, 200)
    segs = log.segments()
    originals = {s.base: open(s.log_path, "rb").read() for s in segs[:-1]}
    st.wait_background()  # retention skips a segment whose roll is still finishing
    deleted = st.apply_retention()[("t", 3)]  # returns while the archives are held
    assert sorted(deleted) == sorted(originals)
    assert [s.base for s in log.segments()] == [segs[-1].base]
    for base in originals:  # out of the log and of readers' listings, kept until archived
        assert os.path.exists(layout.log_path(log.dir, base) + layout.ARCHIVING_SUFFIX)
    assert layout.list_segments(log.dir) == [segs[-1].base]
    fs.gate.set()
    st.close()  # waits for the background work
    assert fs.threads == {"hpbroker-storage"}
    for base, data in originals.items():
        p = tmp_path / "arch" / "t-3" / (layout.segment_name(base) + ".log.gz")
        assert gzip.decompress(p.read_bytes()) == data
    left = [n for n in os.listdir(log.dir) if n.endswith((layout.ARCHIVING_SUFFIX, layout.DELETED_SUFFIX))]
    assert not left, left


def test_archiving_that_fails_keeps_the_segment_file_and_the_next_start_finishes_it(tmp_path):
    arch = tmp_path / "arch"
    arch.write_bytes(b"not a directory")  # the archive cannot be written: makedirs fails
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=-1, retention_bytes=0,
                    retention_policy="archive", archive_dir=str(arch))
    with Storage(tmp_path / "data", cfg) as st:
        log = st.partition("t", 0)
        fill(log, 120)
        end = log.log_end_offset
        originals = {s.base: open(s.log_path, "rb").read() for s in log.segments()[:-1]}
        st.wait_background()  # retention skips a segment whose roll is still finishing
        assert st.apply_retention()[("t", 0)]
    kept = sorted(n for n in os.listdir(log.dir) if n.endswith(layout.ARCHIVING_SUFFIX))
    assert kept == sorted(layout.segment_name(b) + ".log" + layout.ARCHIVING_SUFFIX for b in originals)
    # a crash before the archive was durable looks the same; the next open finishes the job
    arch.unlink()
    with Storage(tmp_path / "data", cfg) as st2:
        log2 = st2.partition("t", 0)
        assert log2.log_end_offset == end and log2.earliest_offset == log.earliest_offset
    for base, data in originals.items():
        assert gzip.decompress((arch / "t-0" / (layout.segment_name(base) + ".log.gz")).read_bytes()) == data
    assert not [n for n in os.listdir(log.dir) if n.endswith(layout.ARCHIVING_SUFFIX)]


def test_group_commit_many_partitions(tmp_path):
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, flush_batches=10, flush_bytes=0)
    t = [0.0]
    with Storage(tmp_path, cfg) as st:
        gc = GroupCommit(cfg, clock=lambda: t[0])
        logs = [st.partition("t", p) for p in range(4)]
        done = []
        assert gc.deadline() is None and not gc.due()
        for i in range(9):
            gc.append(logs[i % 4], make_batch(2, tag=i), 0, callback=lambda e, b, l: done.append((e, b, l)))
        assert not gc.due() and gc.deadline() == pytest.approx(cfg.flush_delay_us / 1e6)
        gc.append(logs[0], make_batch(2), 0, callback=lambda e, b, l: done.append((e, b, l)))
        assert gc.due()
        res = gc.flush()
        assert res == {("t", p): logs[p].high_watermark for p in range(4)}
        assert res[("t", 0)] == 8  # 4 batches of 2 records
        assert len(done) == 10 and all(e is None for e, _, _ in done)
        assert all(lg.synced_offset == lg.log_end_offset for lg in logs)
        # time trigger
        gc.append(logs[1], make_batch(1), 0)
        assert not gc.due(now=0.0)
        assert gc.due(now=1.0)
        # a batch larger than flush_bytes is still synced before its ack
        assert gc.flush()[("t", 1)] == logs[1].log_end_offset


def test_group_commit_async_mode(tmp_path):
    cfg = LogConfig(flush_mode="async", async_fsync_interval_ms=1000, write_buffer_bytes=1 << 16)
    t = [0.0]
    with Storage(tmp_path, cfg) as st:
        log = st.partition("t", 0)
        gc = GroupCommit(cfg, clock=lambda: t[0])
        base, last = gc.append(log, make_batch(5), 0)
        assert (base, last) == (0, 4)
        assert gc.flush() == {("t", 0): 5}
        assert log.written_offset == 5 and log.synced_offset == 0 and log.high_watermark == 5
        assert gc.deadline() == pytest.approx(1.0)
        t[0] = 1.5
        assert gc.due()
        gc.flush()
        assert log.synced_offset == 5
        assert gc.deadline() is None


def test_big_batch_larger_than_staging_buffer(tmp_path):
    cfg = LogConfig(write_buffer_bytes=1 << 16, segment_bytes=1 << 20)
    with Storage(tmp_path, cfg) as st:
        log = st.partition("t", 0)
        big = make_batch(3, 100_000)  # ~300 KB through a 64 KiB buffer
        log.append(make_batch(1, 10), 0)
        log.append(big, 0)
        log.append(make_batch(1, 10), 0)
        log.flush()
        hs = read_all(log)
        assert [h.record_count for h in hs] == [1, 3, 1]
        assert bytes(log.read(1, 1))[16:] == big[16:]
    log = PartitionLog(str(tmp_path / "t-0"), cfg)
    assert log.log_end_offset == 5 and log.fenced is None
    log.close()


def test_buffered_mode_round_trip(tmp_path):
    cfg = LogConfig(direct_io=False, segment_bytes=1 << 16, write_buffer_bytes=1 << 16)
    with Storage(tmp_path, cfg) as st:
        log = st.partition("t", 0)
        assert not log.direct
        fill(log, 100)
        assert check_contiguous(read_all(log)) == log.log_end_offset
        assert os.path.getsize(layout.log_path(log.dir, log.segments()[-1].base)) == log.segments()[-1].size


def test_roll_by_age(tmp_path):
    now = [1000.0]
    cfg = LogConfig(segment_ms=10_000, write_buffer_bytes=1 << 16)
    with Storage(tmp_path, cfg, clock=lambda: now[0]) as st:
        log = st.partition("t", 0)
        log.append(make_batch(1), 0)
        now[0] += 5
        log.append(make_batch(1), 0)
        assert len(log.segments()) == 1
        now[0] += 6
        log.append(make_batch(1), 0)
        assert [s.base for s in log.segments()] == [0, 2]
        # closed segments are cut to their logical size (no O_DIRECT padding)
        s0 = log.segments()[0]
        assert os.path.getsize(s0.log_path) == s0.size


def test_stamp_does_not_touch_the_producer_buffer(tmp_path):
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 0)
        log.append(make_batch(1), 0)
        b = bytearray(make_batch(2))
        before = bytes(b)
        log.append(memoryview(b).toreadonly(), 9)
        assert bytes(b) == before
        log.flush()
        h = batches(log.read(1, 100))[0]
        assert (h.base_offset, h.leader_epoch) == (1, 9)


def test_retention_unlinks_in_the_background_and_recovery_finishes_the_job(tmp_path):
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, retention_ms=-1, retention_bytes=2 << 16)
    fs = GatedFS("unlink", layout.DELETED_SUFFIX)
    st = Storage(tmp_path, cfg, fs=fs)
    log = st.partition("t", 0)
    fill(log, 400)
    before = len(log.segments())
    st.wait_background()  # retention skips a segment whose roll is still finishing
    deleted = st.apply_retention()[("t", 0)]  # returns while every unlink is held
    assert deleted and len(log.segments()) == before - len(deleted)
    for base in deleted:  # out of the log and of readers' listings at once, still on disk meanwhile
        assert not os.path.exists(layout.log_path(log.dir, base))
        assert os.path.exists(layout.log_path(log.dir, base) + layout.DELETED_SUFFIX)
    assert layout.list_segments(log.dir) == [s.base for s in log.segments()]
    assert check_contiguous(read_all(log, start=log.earliest_offset), log.earliest_offset) == log.log_end_offset
    fs.gate.set()
    st.close()  # waits for the background unlinks
    assert fs.threads == {"hpbroker-storage"}
    assert not [n for n in os.listdir(log.dir) if n.endswith(layout.DELETED_SUFFIX)]
    # a crash between the rename and the unlink: the next open removes the leftover
    leftover = layout.log_path(log.dir, 0) + layout.DELETED_SUFFIX
    with open(leftover, "wb") as f:
        f.write(b"x" * 4096)
    with Storage(tmp_path, cfg) as st2:
        log2 = st2.partition("t", 0)
        assert not os.path.exists(leftover)
        assert log2.earliest_offset == log.earliest_offset and log2.log_end_offset == log.log_end_offset
