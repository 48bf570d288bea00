"""Pipelined group commit: GroupCommit.start_flush()/poll() with the I/O thread.

The I/O thread writes and fdatasyncs while the caller keeps appending into
the second staging buffer.  Acks still wait for the fdatasync that covers
them; a failure fails every waiting batch (in the failed flush and staged
after it), fences (or, for ENOSPC on the write, rolls back), and nothing is
retried and then acknowledged."""

from __future__ import annotations

import contextlib
import errno
import sys
import threading
import time

import pytest

from hpbroker.config import LogConfig
from hpbroker.io import DiskFull, FaultyFileSystem, GroupCommit, PartitionFenced, PartitionLog, Storage
from hpbroker.io.inspect import inspect_partition
from hpbroker.io.offset_index import OffsetIndex
from hpbroker.io.testing import make_batch, read_all
from hpbroker.io.time_index import TimeIndex

SMALL = LogConfig(segment_bytes=1 << 18, write_buffer_bytes=1 << 16, flush_batches=0, flush_bytes=0)
#: How long a test waits for an event, and a held call for its gate: generous
#: for a loaded machine, bounded.  The gate waits longer than any test does, and
#: every test opens it (``released``) before its Storage closes, so a failed
#: assertion is reported as itself, never as a held I/O thread's timeout.
WAIT_S = 60
GATE_S = 2 * WAIT_S


class GatedFS(FaultyFileSystem):
    """Holds every fdatasync (or pwrite) until ``gate`` is set, so the I/O thread is provably busy."""

    def __init__(self, op="fdatasync"):
        super().__init__()
        self.op = op
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _hold(self, op):
        if op == self.op:
            self.entered.set()
            assert self.gate.wait(GATE_S)

    def fdatasync(self, fd):
        self._hold("fdatasync")
        super().fdatasync(fd)

    def pwrite(self, fd, buf, pos):
        self._hold("pwrite")
        return super().pwrite(fd, buf, pos)


@contextlib.contextmanager
def released(fs):
    """Inside ``with Storage(...) as st, released(fs):`` this exits first: it
    opens the gate and, when the test failed, drops the faults still armed,
    so the Storage closes without waiting on a held call or meeting an
    injected error, and the test's own failure is the one reported."""
    try:
        yield fs
    except BaseException:
        fs.clear()
        raise
    finally:
        fs.gate.set()


def open_when_waiting(thread_id: int, function: str, gate: threading.Event, seen: list) -> None:
    """Set ``gate`` once thread ``thread_id`` is inside ``function`` (or after
    WAIT_S); append to ``seen`` whether it was."""
    deadline = time.monotonic() + WAIT_S
    while True:
        f = sys._current_frames().get(thread_id)
        while f is not None and f.f_code.co_name != function:
            f = f.f_back
        if f is not None or time.monotonic() > deadline:
            break
        time.sleep(0.001)
    seen.append(f is not None)
    gate.set()


def contiguous(log, start=None):
    off = log.earliest_offset if start is None else start
    for h in read_all(log):
        assert h.base_offset == off
        off = h.last_offset + 1
    return off


def test_pipelined_round_trip_rolls_and_large_batches(tmp_path):
    done = []
    woke = threading.Semaphore(0)
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 0)
        gc = GroupCommit(SMALL, on_io_done=woke.release)
        expect = 0
        results = {}
        for i in range(300):
            n, size = (50, 3000) if i % 37 == 0 else (3, 100 + i)  # some batches > the 64 KiB buffer
            base, last = gc.append(log, make_batch(n, size, ts=i, tag=i % 7), 0,
                                   callback=lambda e, b, l: done.append((e, b, l, log.high_watermark)))
            assert base == expect
            expect = last + 1
            if i % 5 == 4:
                results.update(gc.start_flush())
            if i % 11 == 0:
                results.update(gc.poll())
        assert all(isinstance(r, int) for r in results.values())
        results.update(gc.flush())  # the last start_flush may have been collected already
        assert results[("t", 0)] == expect == log.high_watermark
        assert len(log.segments()) > 3  # rolled with flushes in flight
        assert woke.acquire(timeout=1)
        assert len(done) == 300
        assert [b for _, b, _, _ in done] == sorted(b for _, b, _, _ in done)  # each once, in order
        assert all(e is None and l < hw for e, b, l, hw in done)  # acked only below the durable offset
        assert contiguous(log) == expect
        assert gc.inflight_batches == 0 and gc.pending_batches == 0
        gc.close()
    with PartitionLog(str(tmp_path / "t-0"), SMALL) as log:
        assert log.fenced is None and log.recovered_truncated_bytes == 0
        assert log.log_end_offset == expect and contiguous(log) == expect
    items = list(inspect_partition(str(tmp_path / "t-0")))  # every batch CRC-checked, across buffer switches
    assert len(items) == 300 and all(it.problem is None for it in items)


def test_take_pending_below_keeps_later_entries_for_rollback():
    idx, tidx = OffsetIndex(), TimeIndex()
    for rel in (10, 20, 30):
        idx.append(rel, rel * 100)
        tidx.maybe_append(rel, rel)
    assert idx.take_pending(25) == OffsetIndex.from_bytes(idx.to_bytes()[:16]).to_bytes()
    assert len(tidx.take_pending(25)) == 24
    idx.truncate_from(30)  # still pending, so a rollback may drop it
    tidx.truncate_from(30)
    assert idx.take_pending() == b"" and tidx.take_pending() == b""
    assert list(idx.rel) == [10, 20] and list(tidx.rel) == [10, 20]


def test_fsync_failure_while_io_thread_busy_fails_everything_waiting(tmp_path):
    fs = GatedFS()
    fs.gate.set()
    with Storage(tmp_path, SMALL, fs=fs) as st, released(fs):
        log, other = st.partition("t", 0), st.partition("t", 1)
        gc = GroupCommit(SMALL)
        gc.append(log, make_batch(3), 0)
        gc.append(other, make_batch(3), 0)
        assert gc.flush() == {("t", 0): 3, ("t", 1): 3}
        got = []
        cb = lambda e, b, l: got.append((e, b, l))  # noqa: E731
        fs.gate.clear()
        fs.entered.clear()
        for _ in range(3):
            gc.append(log, make_batch(2), 0, callback=cb)
        fs.fail("fdatasync", errno.EIO, path="t-0")
        gc.start_flush()  # returns while the fdatasync is held
        assert fs.entered.wait(WAIT_S) and log.flush_in_flight
        for _ in range(2):  # staged behind the failing flush, in the other buffer
            gc.append(log, make_batch(2), 0, callback=cb)
        assert gc.poll() == {} and got == [] and gc.inflight_batches == 3
        assert log.high_watermark == 3
        fs.gate.set()
        res = gc.poll(wait=True)
        assert isinstance(res[("t", 0)], PartitionFenced) and res[("t", 0)].cause.errno == errno.EIO
        assert sorted((b, l) for _, b, l in got) == [(3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]
        assert all(isinstance(e, PartitionFenced) for e, _, _ in got)  # every waiting batch failed, none acked
        assert log.fenced is not None and log.high_watermark == 3
        with pytest.raises(PartitionFenced):
            gc.append(log, make_batch(1), 0)
        assert isinstance(gc.flush()[("t", 0)], PartitionFenced)  # never retried
        assert read_all(log)[-1].last_offset == 2
        gc.append(other, make_batch(1), 0)
        res = gc.start_flush()
        res.update(gc.close())
        assert res == {("t", 1): 4}  # the other partition is unaffected
        assert fs.calls["fdatasync"] >= 3


def test_failed_flush_surfaces_at_append_when_the_buffer_overflows(tmp_path):
    fs = GatedFS()
    with Storage(tmp_path, SMALL, fs=fs) as st, released(fs):
        log = st.partition("t", 0)
        gc = GroupCommit(SMALL)
        got = []
        gc.append(log, make_batch(2, 1000), 0, callback=lambda e, b, l: got.append(e))
        fs.fail("fdatasync", errno.EIO)
        gc.start_flush()
        assert fs.entered.wait(WAIT_S)
        waited = []  # the gate opens once this thread waits for the held flush, not after a guessed delay
        opener = threading.Thread(target=open_when_waiting, args=(threading.get_ident(), "_drain", fs.gate, waited))
        opener.start()
        with pytest.raises(PartitionFenced):  # bigger than the free buffer: waits for the flush, which failed
            gc.append(log, make_batch(20, 4000), 0, callback=lambda e, b, l: got.append(e))
        opener.join()
        assert waited == [True], "the append did not wait for the in-flight flush"
        assert len(got) == 1 and isinstance(got[0], PartitionFenced)
        assert isinstance(gc.flush()[("t", 0)], PartitionFenced)
        assert log.high_watermark == 0


def test_enospc_on_pipelined_write_rolls_back_and_stays_writable(tmp_path):
    fs = GatedFS("pwrite")
    fs.gate.set()
    with Storage(tmp_path, SMALL, fs=fs) as st, released(fs):
        log = st.partition("t", 0)
        gc = GroupCommit(SMALL)
        gc.append(log, make_batch(4, 500), 0)
        res = gc.start_flush()
        res.update(gc.poll(wait=True))
        assert res == {("t", 0): 4}
        got = []
        cb = lambda e, b, l: got.append((e, b))  # noqa: E731
        gc.append(log, make_batch(2, 500), 0, callback=cb)
        fs.fail("pwrite", errno.ENOSPC)
        fs.gate.clear()
        fs.entered.clear()
        gc.start_flush()
        assert fs.entered.wait(WAIT_S)
        gc.append(log, make_batch(2, 500), 0, callback=cb)  # staged after: rolled back too
        fs.gate.set()
        res = gc.poll(wait=True)
        assert isinstance(res[("t", 0)], DiskFull) and res[("t", 0)].rolled_back_to == 4
        assert sorted(b for _, b in got) == [4, 6] and all(isinstance(e, DiskFull) for e, _ in got)
        assert log.fenced is None and log.log_end_offset == 4 and log.high_watermark == 4
        assert gc.append(log, make_batch(3, 500), 0)[0] == 4  # offsets from the rollback point are reused
        res = gc.start_flush()
        res.update(gc.flush())
        assert res == {("t", 0): 7}
        assert contiguous(log) == 7
    with PartitionLog(str(tmp_path / "t-0"), SMALL) as log:
        assert log.fenced is None and log.log_end_offset == 7 and contiguous(log) == 7


def test_blocking_flush_after_start_flush_reports_once(tmp_path):
    with Storage(tmp_path, SMALL) as st:
        log = st.partition("t", 0)
        gc = GroupCommit(SMALL)
        calls = []
        gc.append(log, make_batch(5), 0, callback=lambda e, b, l: calls.append((e, b, l)))
        first = gc.start_flush()
        gc.append(log, make_batch(5), 0, callback=lambda e, b, l: calls.append((e, b, l)))
        assert first in ({}, {("t", 0): 5}) and gc.flush() == {("t", 0): 10}
        assert calls == [(None, 0, 4), (None, 5, 9)]
        assert gc.flush() == {} and gc.poll(wait=True) == {}
        assert log.synced_offset == log.written_offset == 10


class PathGatedFS(FaultyFileSystem):
    """Holds fdatasync only for files under a directory named ``path`` (a
    whole path component, as FaultyFileSystem's rules match: "t-0" must not
    hold every partition of a test whose tmp dir is .../pytest-0/...)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: dict[str, set[str]] = {}

    def fdatasync(self, fd):
        p = self._paths.get(fd, "")
        self.threads.setdefault(p, set()).add(threading.current_thread().name)
        if f"/{self.path}/" in f"/{p.strip('/')}/":
            self.entered.set()
            assert self.gate.wait(GATE_S)
        super().fdatasync(fd)


def test_partitions_flush_in_parallel_and_each_keeps_its_io_thread(tmp_path):
    cfg = LogConfig(segment_bytes=1 << 18, write_buffer_bytes=1 << 16, flush_batches=0, flush_bytes=0, io_threads=3)
    fs = PathGatedFS("t-0")
    with Storage(tmp_path, cfg, fs=fs) as st, released(fs):
        logs = [st.partition("t", p) for p in range(5)]
        gc = GroupCommit(cfg)
        got: dict[int, list] = {p: [] for p in range(5)}
        for rnd in range(3):
            for p, log in enumerate(logs):
                gc.append(log, make_batch(2), 0, callback=lambda e, b, l, p=p: got[p].append((e, b, l)))
            if rnd == 0:  # partition 0's fdatasync is held; the others still finish
                res = gc.start_flush()  # with the flushes that finished already (under load, some do)
                assert fs.entered.wait(WAIT_S), f"t-0's fdatasync not reached in {WAIT_S} s"
                deadline = time.monotonic() + WAIT_S
                while len(res) < 3 and time.monotonic() < deadline:  # t-3 waits behind t-0 on the same thread
                    res.update(gc.poll())                           # (3 threads, 5 partitions)
                    threading.Event().wait(0.01)
                assert set(res) == {("t", 1), ("t", 2), ("t", 4)} and all(v == 2 for v in res.values()), (
                    f"flushes finished within {WAIT_S} s: {res}; files fdatasync'd: {sorted(fs.threads)}")
                assert got[0] == [] and got[3] == [] and gc.inflight_batches == 2
                fs.gate.set()
            else:
                gc.flush()
        gc.close()
        for p, log in enumerate(logs):
            assert [(e, b, l) for e, b, l in got[p]] == [(None, 0, 1), (None, 2, 3), (None, 4, 5)]
            assert log.high_watermark == 6 and contiguous(log) == 6
        pipelined = {p: {n for n in t if n.startswith("hpbroker-io")} for p, t in fs.threads.items()}
        assert len(pipelined) == 5 and all(len(t) == 1 for t in pipelined.values())  # one I/O thread per partition
        assert len({n for t in pipelined.values() for n in t}) == 3  # spread over io_threads
