"""Recovery: torn, zeroed and garbage tails are cut; mid-log corruption fences."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hpbroker import batch as B
from hpbroker.config import LogConfig
from hpbroker.io import PartitionFenced, PartitionLog
from hpbroker.io import layout
from hpbroker.io.testing import make_batch, read_all

CFG = LogConfig(segment_bytes=1 << 16, index_interval_bytes=512, write_buffer_bytes=1 << 16)


def build(d, n=60, close=False, cfg=CFG):
    log = PartitionLog(str(d), cfg)
    for i in range(n):
        log.append(make_batch(1 + i % 4, 150, ts=1000 + i, tag=i), 1)
    log.flush()
    if close:
        log.close()
    return log


def batch_ends(path, base):
    """[(end position, next offset)] of the batches in a segment file."""
    data = open(path, "rb").read()
    out = [(0, base)]
    for pos, h in B.iter_batches(data):
        if h.batch_length < B.HEADER_SIZE:
            break
        out.append((pos + h.batch_length, h.base_offset + h.record_count))
    return out


def last_log(d):
    base = layout.list_segments(str(d))[-1]
    return layout.log_path(str(d), base), base


def reopen_ok(d, expect_end):
    log = PartitionLog(str(d), CFG)
    try:
        assert log.fenced is None
        assert log.log_end_offset == expect_end
        hs = read_all(log)
        off = 0
        for h in hs:
            assert h.base_offset == off
            off = h.last_offset + 1
        assert off == expect_end
        log.append(make_batch(2), 2)  # appends go on from there
        log.flush()
        assert log.log_end_offset == expect_end + 2
        assert read_all(log, start=expect_end)[0].base_offset == expect_end
    finally:
        log.close()


_TEMPLATE: dict = {}


def template():
    """One unclean log (O_DIRECT padding at the end), built once, copied per example."""
    if "dir" not in _TEMPLATE:
        d = tempfile.mkdtemp(prefix="hpb-tmpl-")
        build(os.path.join(d, "t-0"), n=50)  # not closed: like a crash after the last flush
        _TEMPLATE["dir"] = os.path.join(d, "t-0")
    return _TEMPLATE["dir"]


def teardown_module():
    if "dir" in _TEMPLATE:
        shutil.rmtree(os.path.dirname(_TEMPLATE["dir"]), ignore_errors=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0, 1), mode=st.sampled_from(["cut", "zero", "garbage"]), seed=st.integers(0, 2**32 - 1))
def test_torn_tail_at_any_byte_is_truncated_to_last_whole_batch(tmp_path_factory, frac, mode, seed):
    d = tmp_path_factory.mktemp("torn") / "t-0"
    shutil.copytree(template(), d)
    path, base = last_log(d)
    ends = batch_ends(path, base)
    logical = ends[-1][0]
    p = int(frac * logical)
    with open(path, "r+b") as f:
        if mode == "cut":
            f.truncate(p)
        elif mode == "zero":
            f.seek(p)
            f.write(bytes(logical - p + 5000))
        else:
            import random
            junk = bytearray(random.Random(seed).randbytes(3000))
            f.seek(p)
            orig = f.read(1)
            if orig:
                junk[0] = orig[0] ^ 0xFF  # the first junk byte really differs
            f.truncate(p)
            f.seek(p)
            f.write(junk)
    expect = max(off for end, off in ends if end <= p)
    reopen_ok(d, expect)


def test_zero_padding_after_unclean_stop_is_not_data(tmp_path):
    log = build(tmp_path / "t-0", n=30)
    end = log.log_end_offset
    path, _ = last_log(tmp_path / "t-0")
    assert os.path.getsize(path) % 4096 == 0  # O_DIRECT padding is in the file
    reopen_ok(tmp_path / "t-0", end)


def flip(path, pos, bit=0x10):
    with open(path, "r+b") as f:
        f.seek(pos)
        c = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([c ^ bit]))


def assert_fenced_untouched(d, path, size_before, good_end):
    log = PartitionLog(str(d), CFG)
    try:
        assert isinstance(log.fenced, PartitionFenced)
        assert os.path.getsize(path) == size_before  # nothing cut away
        with pytest.raises(PartitionFenced):
            log.append(make_batch(1), 1)
        assert log.high_watermark == good_end
        hs = read_all(log)
        assert (hs[-1].last_offset + 1 if hs else log.earliest_offset) == good_end
    finally:
        log.close()
    return log.fenced


def test_mid_log_bit_flip_fences_never_truncates(tmp_path):
    d = tmp_path / "t-0"
    build(d, n=60)
    path, base = last_log(d)
    ends = batch_ends(path, base)
    assert len(ends) > 5
    (start, off), _ = ends[2], ends[3]
    flip(path, start + 100)  # inside the 3rd batch of the last segment; valid batches follow
    err = assert_fenced_untouched(d, path, os.path.getsize(path), off)
    assert "mid-log" in str(err).lower() and str(start) in str(err)


def test_corrupt_last_batch_below_recovery_point_fences(tmp_path):
    d = tmp_path / "t-0"
    build(d, n=40, close=True)  # clean close: recovery point = log end
    path, base = last_log(d)
    ends = batch_ends(path, base)
    flip(path, ends[-2][0] + 80)  # the very last batch; nothing valid after it
    err = assert_fenced_untouched(d, path, os.path.getsize(path), ends[-2][1])
    assert "recovery point" in str(err)


def test_corruption_in_an_earlier_segment_fences(tmp_path):
    d = tmp_path / "t-0"
    build(d, n=400)
    assert len(layout.list_segments(str(d))) > 2
    os.unlink(d / layout.CHECKPOINT_NAME)  # no checkpoint: every segment is scanned
    first = layout.log_path(str(d), 0)
    ends = batch_ends(first, 0)
    flip(first, ends[-2][0] + 70)  # last batch of segment 0
    sizes = {b: os.path.getsize(layout.log_path(str(d), b)) for b in layout.list_segments(str(d))}
    assert_fenced_untouched(d, first, sizes[0], ends[-2][1])
    assert {b: os.path.getsize(layout.log_path(str(d), b)) for b in layout.list_segments(str(d))} == sizes


def test_base_offset_outside_crc_is_checked_by_contiguity(tmp_path):
    d = tmp_path / "t-0"
    build(d, n=30)
    path, base = last_log(d)
    ends = batch_ends(path, base)
    flip(path, ends[3][0] + 1, 0x01)  # base_offset of the 4th batch: CRC still valid
    assert_fenced_untouched(d, path, os.path.getsize(path), ends[3][1])


def test_index_files_are_rebuilt_after_damage(tmp_path):
    d = tmp_path / "t-0"
    log = build(d, n=200)
    end = log.log_end_offset
    active = log.segments()[-1]
    with open(active.index_path, "wb") as f:
        f.write(os.urandom(100))
    reopen_ok(d, end)


_CHILD = textwrap.dedent("""
    import sys
    from hpbroker.config import LogConfig
    from hpbroker.io import GroupCommit, Storage
    from hpbroker.io.testing import make_batch
    cfg = LogConfig(segment_bytes=1 << 18, write_buffer_bytes=1 << 16, flush_batches=7, flush_bytes=0)
    st = Storage(sys.argv[1], cfg)
    log = st.partition("t", 0)
    gc = GroupCommit(cfg)
    out = sys.stdout
    i = 0
    while True:
        gc.append(log, make_batch(1 + i % 5, 200, tag=i), 1)
        i += 1
        if gc.due():
            res = gc.flush()
            out.write(f"{res[('t', 0)]}\\n")
            out.flush()
""")


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(data)], stdout=subprocess.PIPE, text=True)
    acked = 0
    try:
        for line in proc.stdout:
            acked = max(acked, int(line))
            if acked > 15_000:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert acked > 15_000
    log = PartitionLog(str(data / "t-0"), LogConfig(segment_bytes=1 << 18, write_buffer_bytes=1 << 16))
    try:
        assert log.fenced is None
        assert log.log_end_offset >= acked
        assert len(log.segments()) > 2
        off = 0
        for h in read_all(log):
            assert h.base_offset == off
            off = h.last_offset + 1
        assert off == log.log_end_offset
    finally:
        log.close()


_APPENDER = textwrap.dedent("""
    import sys
    from hpbroker.config import LogConfig
    from hpbroker.io import GroupCommit, Storage
    from hpbroker.io.testing import make_batch
    cfg = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, flush_batches=5, flush_bytes=0,
                    retention_ms=-1, retention_bytes=6 << 16)
    st = Storage(sys.argv[1], cfg)
    log = st.partition("t", 0)
    gc = GroupCommit(cfg)
    i = flushes = 0
    while True:
        gc.append(log, make_batch(1 + i % 3, 300, tag=i), 1)
        i += 1
        if gc.due():
            hw = gc.flush()[("t", 0)]
            flushes += 1
            if flushes % 10 == 0:  # by flush count: due() may also fire by time on a busy machine
                st.apply_retention()
            sys.stdout.write(f"{hw}\\n")
            sys.stdout.flush()
""")


def test_reader_in_another_process_while_writer_appends_and_deletes(tmp_path):
    """The writer runs in a child process (rolls + size retention); this
    process reads with the high watermarks the child reports."""
    from hpbroker.io import OffsetOutOfRange, PartitionReader

    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(data)], stdout=subprocess.PIPE, text=True)
    reader = None
    try:
        off = None
        checked = 0
        for line in proc.stdout:
            hw = int(line)
            if reader is None:
                reader = PartitionReader(str(data / "t-0"))
            if off is None:
                off = reader.earliest_offset() or 0
            while off < hw:
                try:
                    chunk = reader.read(off, 1 << 14, hw)
                except OffsetOutOfRange:
                    off = reader.earliest_offset()  # retention overtook us: skip ahead
                    continue
                assert chunk, (off, hw)
                for pos, h in B.iter_batches(chunk):
                    B.check_batch(chunk, pos, h.batch_length)
                    assert h.last_offset < hw
                    if h.last_offset >= off:
                        assert h.base_offset <= off
                        off = h.last_offset + 1
                        checked += 1
            if hw > 20_000:
                break
        assert checked > 1000
        assert reader.earliest_offset() > 0  # retention ran underneath the reader
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if reader is not None:
            reader.close()


# -- issue 26: a bit flip in the last batch is damage, not a torn tail ----------------------------


def _last_batch(d):
    path, base = last_log(d)
    ends = batch_ends(path, base)
    return path, ends[-2][0], ends[-1][0], ends[-2][1]  # path, its position, its end, the offset before it


@pytest.mark.parametrize("where,bit", [(100, 0x01), (-1, 0x80), (B.CRC_AT + 2, 0x04), (B.MAX_TS_AT, 0x02),
                                      (B.BASE_OFFSET_AT + 3, 0x10), (B.LENGTH_AT + 1, 0x01), (B.MAGIC_AT, 0x08),
                                      (B.MAGIC_AT + 2, 0x40)])
def test_a_flipped_bit_in_the_last_batch_fences_and_is_never_cut(tmp_path, where, bit):
    d = tmp_path / "t-0"
    build(d, n=30)  # unclean (crash after the last flush): the last batch lies past the recovery point
    path, pos, end, good_end = _last_batch(d)
    flip(path, pos + where if where >= 0 else end + where, bit)
    err = assert_fenced_untouched(d, path, os.path.getsize(path), good_end)
    assert "not a torn tail" in str(err).lower() and "damaged after it was written" in str(err)


def test_a_flipped_leader_epoch_is_caught_by_the_epoch_checkpoint(tmp_path):
    from hpbroker.io.epochs import EpochCache

    d = tmp_path / "t-0"
    d.mkdir()
    EpochCache(str(d), 0).assign(1, 0)  # what the broker's writer records before the first batch of epoch 1
    build(d, n=30)
    path, pos, _, good_end = _last_batch(d)
    flip(path, pos + B.EPOCH_AT + 1, 0x04)  # epoch 1 -> 1025, which the partition never had
    err = assert_fenced_untouched(d, path, os.path.getsize(path), good_end)
    assert "leader_epoch 1025" in str(err) and "damaged after it was written" in str(err)


def test_a_zeroed_sector_in_the_last_batch_is_still_a_torn_tail(tmp_path):
    d = tmp_path / "t-0"
    build(d, n=30)
    path, pos, end, good_end = _last_batch(d)
    with open(path, "r+b") as f:  # the sector holding its end never reached the disk
        s = (end - 1) // 512 * 512
        f.seek(max(s, pos + B.HEADER_SIZE))
        f.write(bytes(end - max(s, pos + B.HEADER_SIZE)))
    reopen_ok(d, good_end)
