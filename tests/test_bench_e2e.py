"""``hpbroker-bench`` end to end (no subcommand): runs as a subprocess
against the broker it starts itself; checks the JSON's keys and that the
counts agree (sent == acked == in the log == consumed).  Nothing about
speed is asserted.  Every run must leave no broker process and no
/dev/shm object of its instance behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from hpbroker.ring import list_segments

KEYS = {"msgs_per_s", "mb_per_s", "p50_ms", "p99_ms", "p999_ms", "messages", "size", "baselines",
        "cpu_percent", "bytes_on_disk", "broker_pids"}


def _port_in_use(shm_name: str) -> bool:
    """Is the broker whose instance (p<port>) named this object still
    listening?  Then it is another process's broker running beside the
    test (a developer's, another suite's), not a leak of the bench's."""
    import socket

    inst = shm_name.removeprefix("sem.").split(".")[1]
    if not inst[1:].isdigit():
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", int(inst[1:])))
        except OSError:
            return True
    return False


def _bench_pids(res) -> set[int]:
    """Every pid of every broker process the bench reported, in the result
    and in its nested runs (the peak run, each replica pair)."""
    found: set[int] = set()
    if isinstance(res, dict):
        for k, v in res.items():
            if k in ("broker_pids", "slave_pids") and isinstance(v, dict):
                found |= {p for p in v.values() if isinstance(p, int)}
            else:
                found |= _bench_pids(v)
    elif isinstance(res, list):
        for v in res:
            found |= _bench_pids(v)
    return found


def _left_by_the_bench(before: set[str], pids: set[int]) -> list[str]:
    """The hpb.p<port>.* objects made since ``before`` that belong to the
    bench's brokers.  Other brokers come and go beside the test (a parallel
    test's broker that is starting, or was killed -9 and not restarted yet):
    an instance is the bench's when one of its ring segments was owned by a
    bench pid; an instance with semaphores only (no segment to say whose it
    is) counts unless its port is served."""
    new = sorted(n for n in set(os.listdir("/dev/shm")) - before if n.removeprefix("sem.").startswith("hpb.p"))
    owners: dict[str, set[int]] = {}
    for info in list_segments():
        owners.setdefault(info.get("instance", ""), set()).add(info.get("owner_pid", -1) if info.get("valid") else -1)
    left = []
    for n in new:
        inst = n.removeprefix("sem.").split(".")[1]
        if inst in owners:
            if owners[inst] & pids:
                left.append(n)
        elif not _port_in_use(n):
            left.append(n)
    return left


def run_bench(tmp_path, *args, timeout=300, warmed=False) -> dict:
    cmd = [sys.executable, "-m", "hpbroker.bench", "--messages", "20000", "--json", "--no-progress",
           "--dir", str(tmp_path), *args]
    before = set(os.listdir("/dev/shm"))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    res = json.loads(out.stdout)
    assert KEYS <= set(res), sorted(KEYS - set(res))
    assert res["ok"] is True
    assert res["messages"] == res["messages_sent"] == res["messages_acked"] == 20000
    if warmed:  # the warm-up's batches are in the log, not in the figures
        assert res["messages_in_log"] > 20000
    else:
        assert res["messages_in_log"] == 20000
    assert res["errors"] == 0
    assert res["size"] == 100
    assert res["bytes_on_disk"] > 20000 * 100
    assert res["shm_left_behind"] == []
    assert res["broker_exit_code"] == 0
    # the broker's processes are gone, and so are its shared-memory objects
    for name, pid in res["broker_pids"].items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    left = _left_by_the_bench(before, _bench_pids(res))
    if left:  # or a broker beside the test is between creating (or unlinking) its semaphores and its segments
        time.sleep(2)
        left = _left_by_the_bench(before, _bench_pids(res))
    assert not left, left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("hpbroker-bench-e2e-")], "temp dir left behind"
    return res


def test_default_run(tmp_path):
    res = run_bench(tmp_path)
    assert res["acks"] == "1"
    assert res["p50_ms"] is not None and res["p50_ms"] <= res["p99_ms"] <= res["p999_ms"]
    assert {"supervisor", "writer0", "acceptor0"} <= set(res["cpu_percent"])
    assert res["baselines"] == {}


def test_consumers(tmp_path):
    res = run_bench(tmp_path, "--consumers", "1")
    assert res["messages_consumed"] == res["messages_acked"] == 20000
    assert res["messages_replayed"] == 20000
    assert res["e2e_p50_ms"] is not None


def test_rate(tmp_path):
    res = run_bench(tmp_path, "--rate", "200000")
    assert res["offered_rate"] == 200000
    assert res["messages_acked"] == 20000


def test_raw_client_and_disk_baseline(tmp_path):
    res = run_bench(tmp_path, "--client", "raw", "--baseline", "disk")
    disk = res["baselines"]["disk"]
    assert disk["bytes"] >= res["bytes_on_disk"]
    assert disk["mb_per_s"] > 0 and disk["ratio"] > 0


def test_redis_baseline_skips_or_runs(tmp_path):
    import shutil

    res = run_bench(tmp_path, "--baseline", "redis", "--redis-messages", "2000")
    b = res["baselines"]
    if shutil.which("redis-server") is None:
        assert "skipped" in b["redis"]
    else:
        assert b["redis_benchmark"].get("msgs_per_s", 0) > 0 or "skipped" in b["redis_benchmark"]


def _gone(pids: dict) -> None:
    for name, pid in pids.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_replica_run_against_a_same_run_standalone_baseline(tmp_path, mode):
    res = run_bench(tmp_path, "--replica", mode)
    assert res["replica"] == mode and res["acks"] == "all"
    rep = res["replication"]
    assert rep["mode"] == mode
    # the slave caught up: its final LATEST offsets are the master's, which hold every message
    assert rep["caught_up"] is True and rep["catch_up_seconds"] >= 0
    assert rep["slave_offsets"] == rep["master_offsets"]
    assert sum(rep["master_offsets"]) == res["messages_in_log"] == 20000
    assert {"insync", "lag_messages", "lag_bytes", "lag_seconds"} <= set(rep["lag_at_produce_end"])
    assert rep["insync_wait_seconds"] >= 0
    assert res["slave_exit_code"] == 0
    # CPU covers the slave's processes too, and they are all gone (run_bench checked broker_pids)
    assert rep["slave_pids"] and set(rep["slave_pids"]) <= set(res["broker_pids"])
    assert {"slave.supervisor", "slave.writer0"} <= set(res["cpu_percent"])
    # the standalone run of the same workload, same invocation
    sa = res["baselines"]["standalone"]
    assert sa["ok"] is True and sa["replica"] is None and sa["acks"] == "all"
    assert sa["messages_sent"] == sa["messages_acked"] == sa["messages_in_log"] == 20000
    assert sa["broker_exit_code"] == 0 and sa["shm_left_behind"] == []
    assert sa["ratio"] > 0 and res["replica_vs_standalone"] == sa["ratio"]
    assert sa["p50_ms"] is not None and sa["p99_ms"] is not None
    # CPU per message, both runs: the slave's processes count in the replicated one (a run this
    # short may end before the sampler takes a second reading: a figure can be 0)
    for r in (res, sa):
        cm = r["cpu_per_m_msgs"]
        assert cm["broker"] >= 0 and cm["bench"] >= 0 and cm["all"] == pytest.approx(cm["broker"] + cm["bench"])
    _gone(sa["broker_pids"])


def test_replica_pairs_alternate_and_report_the_median_pair(tmp_path):
    import statistics

    res = run_bench(tmp_path, "--replica", "sync", "--pairs", "2", timeout=600)
    pairs = res["pairs"]
    assert [p["first"] for p in pairs] == ["standalone", "replica"]  # the order alternates
    for p in pairs:
        assert p["ok"] is True and p["ratio"] == pytest.approx(p["replica_msgs_per_s"] / p["standalone_msgs_per_s"])
    ratios = [p["ratio"] for p in pairs]
    chosen = pairs[res["median_pair"]]
    assert chosen["ratio"] == statistics.median_low(ratios) == res["replica_vs_standalone"]
    # the top-level figures and the standalone baseline are the median pair's own runs
    assert res["msgs_per_s"] == chosen["replica_msgs_per_s"]
    assert res["baselines"]["standalone"]["msgs_per_s"] == chosen["standalone_msgs_per_s"]


def test_curve_against_a_same_run_plain_broker(tmp_path):
    res = run_bench(tmp_path, "--curve", "--consumers", "1", timeout=600)
    plain = res["baselines"]["plain"]
    assert res["curve"] is True and plain["curve"] is False
    assert res["ok"] is True and plain["ok"] is True and res["messages_consumed"] == 20000
    assert res["curve_vs_plain"] == pytest.approx(res["msgs_per_s"] / plain["msgs_per_s"])
    assert [p["first"] for p in res["pairs"]] == ["plain"]
    # per thread, per broker process (a short run may leave a thread under the 0.5 % shown)
    threads = res["thread_cpu_percent"]
    assert {"acceptor0", "writer0"} <= set(threads) and all(isinstance(v, dict) for v in threads.values())
    assert all(v >= 0.5 for t in threads.values() for v in t.values())


def test_the_cpu_sampler_names_threads_and_counts_only_the_interval():
    """Thread CPU comes from /proc in clock ticks: the main thread burns
    0.3 s of its own CPU time, a thread named "burner" 0.2 s, between start
    and stop; CPU burnt before start does not count."""
    import threading

    import psutil
    import setproctitle

    from hpbroker.bench._e2e_broker import CpuSampler

    def burn(seconds):
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass

    burn(0.3)  # before the interval
    sampler = CpuSampler({"me": psutil.Process()})
    sampler.start()
    burnt, release = threading.Event(), threading.Event()

    def burner():
        setproctitle.setthreadtitle("burner")  # /proc/.../comm, what the sampler reads
        burn(0.2)
        burnt.set()
        release.wait(60)  # alive until stop() has read it

    t = threading.Thread(target=burner, name="burner")
    t.start()
    burn(0.3)
    assert burnt.wait(60)
    sampler.stop()
    release.set()
    t.join()
    dt = sampler.t1 - sampler.t0
    threads = sampler.thread_percent()["me"]
    assert set(threads) >= {"main", "burner"}
    tick = 100.0 / os.sysconf("SC_CLK_TCK")  # one tick, in CPU-seconds x 100
    assert threads["main"] * dt == pytest.approx(30.0, abs=2 * tick + 0.5)
    assert threads["burner"] * dt == pytest.approx(20.0, abs=2 * tick + 0.5)


@pytest.mark.parametrize("args", [["--pairs", "0", "--replica", "sync"], ["--pairs", "2"]])
def test_bad_pairs_is_one_line_and_nonzero(tmp_path, args):
    out = subprocess.run([sys.executable, "-m", "hpbroker.bench", *args], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "--pairs" in out.stderr


def test_fsync_baseline(tmp_path):
    res = run_bench(tmp_path, "--baseline", "fsync", "--fsync-iterations", "50")
    f = res["baselines"]["fsync"]
    assert 0 < f["iterations"] <= 50
    assert f["write_bytes"] == 256 << 10
    assert 0 < f["p50_ms"] <= f["p99_ms"] <= f["p999_ms"] <= f["max_ms"]
    assert f["ack_p99_over_fsync_p99"] > 0
    assert isinstance(f["direct"], bool)


def test_component_suites_still_parse():
    from hpbroker.bench import build_parser, with_default_suite

    assert with_default_suite([]) == ["e2e"]
    assert with_default_suite(["--json"]) == ["e2e", "--json"]
    assert with_default_suite(["log", "--json"]) == ["log", "--json"]
    assert build_parser().parse_args(["ring", "--json"]).suite == "ring"


def test_warmup_is_sent_but_not_counted(tmp_path):
    res = run_bench(tmp_path, "--warmup", "0.5", "--rate", "200000", warmed=True)
    assert res["warmup_s"] == 0.5
    # 0.5 s at 200 k msgs/s went before the 20 000 measured messages
    assert res["messages_in_log"] >= 20000 + 50000


def test_bad_warmup_is_one_line_and_nonzero(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpbroker.bench", "--warmup", "-1"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "--warmup" in out.stderr


def test_rate_as_a_fraction_of_the_same_runs_peak(tmp_path):
    """--rate 50%: the unpaced peak is measured first, then half of it is offered."""
    res = run_bench(tmp_path, "--rate", "50%")
    peak = res["baselines"]["peak"]
    assert peak["ok"] is True and peak["messages_acked"] == 20000 and peak["fraction"] == 0.5
    assert res["offered_rate"] == pytest.approx(peak["msgs_per_s"] / 2)
    assert peak["broker_pids"]["writer0"] != res["broker_pids"]["writer0"], "each run has its own private broker"
    assert peak["ratio"] == pytest.approx(res["msgs_per_s"] / peak["msgs_per_s"])


@pytest.mark.parametrize("rate", ["150%", "-5", "fast", "0%"])
def test_bad_rate_is_one_line_and_nonzero(tmp_path, rate):
    out = subprocess.run([sys.executable, "-m", "hpbroker.bench", "--rate", rate], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "--rate" in out.stderr
