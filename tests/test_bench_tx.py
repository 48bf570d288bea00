"""``hpbroker-bench --transactional`` runs end to end against the broker it
starts: every transaction and plain request it counts is in the log exactly
(messages_in_log == messages_expected), the report has a row per size with
both modes and the commit latency, and it leaves no broker process or
shared memory behind.  Nothing about speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil


def test_transactional_bench_counts_agree_and_it_cleans_up(tmp_path):
    cmd = [sys.executable, "-m", "hpbroker.bench", "--transactional", "--tx-messages", "3", "--tx-messages", "50",
           "--tx-rounds", "1", "--tx-seconds", "0.5", "--tx-concurrency", "2", "--json", "--no-progress",
           "--dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    res = json.loads(out.stdout)
    assert res["ok"] is True
    assert res["messages_in_log"] == res["messages_expected"] > 0
    assert [r["messages_per_tx"] for r in res["results"]] == [3, 50]
    for r in res["results"]:
        assert r["tx_msgs_per_s"] > 0 and r["plain_msgs_per_s"] > 0 and r["ratio"] > 0
        assert 0 < r["commit_p50_ms"] <= r["commit_p99_ms"] and r["commit_p50_ms"] <= r["tx_p50_ms"]
    assert res["shm_left_behind"] == [] and res["broker_exit_code"] == 0
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or [])], "a broker process outlived the bench"
