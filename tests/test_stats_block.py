"""The stats block: layout, single-writer slots, the lock-free reader, log tails, lifecycle in /dev/shm."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from hpbroker import stats
from hpbroker.stats import StatsBlock, layout as L
from hpbroker.stats.reader import log_lines, snapshot

NAMES = L.slot_names(2, 2, replicated=True)


def test_slot_names_and_kinds_follow_the_process_names():
    assert NAMES == ["supervisor", "http", "acceptor0", "acceptor1", "writer0", "writer1", "replicator"]
    b = StatsBlock.over(NAMES, rows=4)
    assert [p.kind for p in snapshot(b).processes] == ["supervisor", "http", "acceptor", "acceptor", "writer",
                                                       "writer", "replicator"]


def test_counters_requests_and_gauges_are_summed_over_slots():
    b = StatsBlock.over(NAMES, rows=4)
    a0, a1 = b.slot("acceptor0"), b.slot("acceptor1")
    a0.add(L.COUNTER["fetch_bytes"], 100)
    a1.add(L.COUNTER["fetch_bytes"], 23)
    a0.reply(0, 0)
    a1.reply(0, 0)
    a1.reply(0, 6)
    a0.reply(1, 99)  # INTERNAL lands in the last code slot
    a0.set(L.GAUGE["pending_requests"], 5)
    a1.set(L.GAUGE["pending_requests"], 2)
    s = snapshot(b)
    assert s.counters["fetch_bytes"] == 123
    assert s.requests["produce"] == {0: 2, 6: 1}
    assert s.requests["fetch"] == {63: 1}
    assert s.gauges["pending_requests"] == 7


def test_histograms_bucket_by_upper_bound_and_keep_sum_and_count():
    b = StatsBlock.over(NAMES, rows=4)
    w = b.slot("writer0")
    h = L.HISTOGRAM_INDEX["fdatasync_seconds"]
    for v in (0.00005, 0.001, 0.0011, 20.0):
        w.observe(h, v)
    buckets, total, count = snapshot(b).histograms["fdatasync_seconds"]
    bounds = L.HISTOGRAMS[h].bounds
    assert count == 4 and sum(buckets) == 4
    assert buckets[0] == 1  # 50 us <= 100 us
    assert buckets[bounds.index(0.001)] == 1  # le is inclusive
    assert buckets[bounds.index(0.0025)] == 1
    assert buckets[-1] == 1  # +Inf
    assert total == pytest.approx(20.00215, abs=1e-5)


def test_stats_lines_give_means_and_bucket_bounded_percentiles():
    from hpbroker.stats.summary import io_stats

    b = StatsBlock.over(NAMES, rows=4)
    w = b.slot("writer0")
    assert io_stats(snapshot(b))["fdatasync_us_p99"] == 0  # nothing observed: 0, not an error
    h = L.HISTOGRAM_INDEX["fdatasync_seconds"]
    for v in [0.0004] * 98 + [0.003, 0.003]:  # p50 in the 500 us bucket; p99 in the 5 ms one
        w.observe(h, v)
    w.observe(L.HISTOGRAM_INDEX["group_commit_batches"], 3)
    w.add(L.COUNTER["rounds"], 1)
    s = io_stats(snapshot(b))
    assert s["group_commit_rounds"] == 1 and s["fdatasync_count"] == 100 and s["fdatasync_us_avg"] == pytest.approx(452.0, abs=0.5)
    assert (s["fdatasync_us_p50"], s["fdatasync_us_p99"]) == (500, 5000)
    assert s["group_commit_batches_avg"] == 3.0 and s["group_commit_batches_p99"] == 4
    w.observe(h, 60.0)  # past the last bound
    for _ in range(5):
        w.observe(h, 60.0)
    assert io_stats(snapshot(b))["fdatasync_us_p99"] == "10000000+"


def test_partition_rows_sum_fields_across_processes_and_stop_when_full():
    b = StatsBlock.over(NAMES, rows=2)
    w, a = b.slot("writer0"), b.slot("acceptor1")
    w.row_add("t", 0, L.ROW["messages_in"], 7)
    a.row_add("t", 0, L.ROW["messages_out"], 3)
    a.row_add("t", 1, L.ROW["messages_out"], 1)
    a.row_add("u", 0, L.ROW["messages_out"], 1)  # a third partition: no row left in acceptor1
    rows = snapshot(b).rows
    k0, k1 = L.partition_key("t", 0), L.partition_key("t", 1)
    assert rows[k0]["messages_in"] == 7 and rows[k0]["messages_out"] == 3
    assert rows[k1]["messages_out"] == 1
    assert L.partition_key("u", 0) not in rows
    assert snapshot(b).counters["rows_full"] == 1


def test_partition_keys_are_stable_and_distinct():
    keys = {L.partition_key(t, p) for t in ("a", "b", "logs") for p in range(1000)}
    assert len(keys) == 3000 and 0 not in keys
    assert L.partition_key("logs", 3) == L.partition_key("logs", 3)


def test_log_tail_keeps_the_newest_lines_of_each_process_in_time_order():
    b = StatsBlock.over(NAMES, rows=2)
    lg = logging.getLogger("hpbroker.test_stats_tail")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    h = stats.SlotLogHandler(b.slot("writer1").w)
    lg.addHandler(h)
    try:
        for i in range(L.LOG_LINES + 10):
            lg.info("line %d", i)
        lg.warning("x" * 1000)  # cut to the line's size, never spilling into the next
    finally:
        lg.removeHandler(h)
    lines = log_lines(b, limit=1000)
    assert len(lines) == L.LOG_LINES
    assert lines[-2][3].endswith(f"line {L.LOG_LINES + 9}")
    assert lines[-1][2] == logging.WARNING and len(lines[-1][3].encode()) == L.LOG_TEXT_BYTES
    assert all(p == "writer1" for _, p, _, _ in lines)
    assert [t for t, *_ in lines] == sorted(t for t, *_ in lines)


def test_shared_memory_block_is_seen_by_another_process_and_unlinked(tmp_path):
    instance = f"statstest{os.getpid()}"
    b = StatsBlock.create(instance, NAMES, rows=8)
    try:
        assert os.path.exists(f"/dev/shm/hpb.{instance}.stats.v1")
        code = ("import sys; from hpbroker import stats; from hpbroker.stats import layout as L\n"
                f"s = stats.process_slot({instance!r}, 'writer1')\n"
                "s.add(L.COUNTER['rounds'], 41); s.row_add('t', 2, L.ROW['bytes_in'], 9)\n")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd(),
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        reader = StatsBlock.attach(instance, readonly=True)
        s = snapshot(reader)
        assert s.counters["rounds"] == 41
        assert s.rows[L.partition_key("t", 2)]["bytes_in"] == 9
        assert not stats.cleanup_stale(instance)  # its owner (this process) lives
        reader.close()
    finally:
        b.close()
        b.unlink()
    assert not os.path.exists(f"/dev/shm/hpb.{instance}.stats.v1")


def test_cleanup_stale_unlinks_the_block_of_a_dead_supervisor():
    instance = f"statsdead{os.getpid()}"
    code = ("from hpbroker.stats import StatsBlock, layout as L\n"
            f"StatsBlock.create({instance!r}, L.slot_names(1, 1, False), 8)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert os.path.exists(f"/dev/shm/hpb.{instance}.stats.v1")
    assert stats.cleanup_stale(instance)
    assert not os.path.exists(f"/dev/shm/hpb.{instance}.stats.v1")


def test_a_process_without_a_block_gets_a_private_slot():
    s = stats.process_slot("nosuchbroker", "acceptor0")
    s.add(L.COUNTER["rounds"])  # counts into private memory, raises nothing
    assert isinstance(s, stats.NullSlot)
