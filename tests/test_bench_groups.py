"""``hpbroker-bench groups`` with tiny sizes: runs as a subprocess against
the broker it starts itself and checks the JSON's structure and counts.
Nothing about speed is asserted.  The run must leave no broker process,
no /dev/shm object of its instance and no temp dir behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    # the subprocess (and the broker and workers it starts) must run this checkout's hpbroker
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_bench(tmp_path, *args, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hpbroker.bench", "groups", "--json", "--no-progress", "--dir", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=_env())


def test_tiny_run_has_every_section(tmp_path):
    before = set(os.listdir("/dev/shm"))
    out = run_bench(tmp_path, "--messages", "24000", "--poll-messages", "2400", "--members", "1,2", "--rounds", "1",
                    "--rebalance-rounds", "1", "--session-timeout-ms", "1000", "--commit-seconds", "0.4",
                    "--commit-rounds", "2", "--no-warmup")
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    res = json.loads(out.stdout)
    assert res["ok"] is True
    assert res["partitions"] == 12 and res["size"] == 100 and res["messages"] == 24000
    assert res["session_timeout_ms"] == 1000 and res["heartbeat_interval_ms"] > 0
    assert res["broker_exit_code"] == 0 and res["shm_left_behind"] == []

    tp = res["throughput"]
    assert tp["messages"] == {"batches": 24000, "poll": 2400}
    assert set(tp["by_api"]) == {"batches", "poll"}
    for api, rows in tp["by_api"].items():
        assert [s["members"] for s in rows] == [1, 2]
        for s in rows:
            assert s["ok"] is True and s["api"] == api
            assert s["group_msgs_per_s"] > 0 and s["nogroup_msgs_per_s"] > 0
            assert len(s["ratios"]) == len(s["pairs"]) == 1
            assert s["ratio"] == pytest.approx(s["pairs"][0]["group"]["msgs_per_s"] / s["pairs"][0]["nogroup"]["msgs_per_s"])
            for mode in ("group", "nogroup"):
                run = s["pairs"][0][mode]
                assert run["mode"] == mode and run["members"] == s["members"]
                assert len(run["reader_cpu_percent"]) == s["members"]
                assert sum(run["partitions_per_reader"]) == 12
                assert {"acceptor0", "writer0", "reader0"} <= set(run["cpu_percent"])
                if api == "batches":  # whole batches, counted exactly; poll() may read past the end it was given
                    assert run["messages"] == 24000
                else:
                    assert run["messages"] >= 2400

    rb = res["rebalance"]
    assert rb["ok"] is True and rb["rounds"] == 1
    for case in ("leave", "kill"):
        s = rb[case]
        assert len(s["runs_ms"]) == 1
        assert 0 < s["median_ms"] <= s["p90_ms"] <= s["max_ms"]
        assert isinstance(s["met"], bool)
    assert rb["kill"]["target_ms"] == 1000 + 1000

    cm = res["commit"]["cases"]
    assert set(cm) == {"commit_1", "commit_12", "produce_call", "produce_send"}
    for k, c in cm.items():
        assert c["count"] > 0 and c["per_s"] > 0, k
        assert 0 < c["p50_ms"] <= c["p99_ms"] <= c["max_ms"], k
    assert cm["commit_1"]["p50_over_produce_call"] > 0

    for name, pid in res["broker_pids"].items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    # only this run's broker instance (hpb.p<port>.*): other brokers on the machine come and go
    mine = f"hpb.p{res['broker_port']}."
    left = [n for n in set(os.listdir("/dev/shm")) - before if n.removeprefix("sem.").startswith(mine)]
    assert not left, left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("hpbroker-bench-")], "temp dir left behind"


def test_one_section_and_the_table(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpbroker.bench", "groups", "--no-progress", "--dir", str(tmp_path),
                          "--sections", "commit", "--commit-seconds", "0.3", "--commit-rounds", "1"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "commit() 12 partitions p50 / p99 / max ms" in out.stdout
    assert "baseline produce acks=all, Transport.call" in out.stdout
    assert "throughput" not in out.stdout and "rebalance" not in out.stdout


@pytest.mark.parametrize("args, word", [(["--members", "1,0"], "--members"), (["--sections", "speed"], "--sections"),
                                        (["--api", "fast"], "--api"), (["--members", "13"], "--members")])
def test_bad_options_are_one_line_and_nonzero(tmp_path, args, word):
    out = subprocess.run([sys.executable, "-m", "hpbroker.bench", "groups", *args], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=_env())
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and word in out.stderr
