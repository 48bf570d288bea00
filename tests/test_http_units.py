"""The HTTP port's pieces without a broker: limits, batch splitting, quantiles, sd_notify, the port knob;
and tests/http_gateway.sh (curl) against a real broker."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, free_port
from hpbroker import batch, config
from hpbroker.broker import sdnotify
from hpbroker.http.app import RateLimit
from hpbroker.http.gateway import _messages, _requests
from hpbroker.http.view import quantile
from hpbroker.protocol.errors import BrokerError, ErrorCode


def test_http_port_defaults_to_the_client_port_plus_80_and_0_turns_it_off():
    assert config.load().http_port == 7680
    assert config.load(broker__port=9000).http_port == 9080
    assert config.load(http__port=0).http_port == 0
    assert config.load(http__port=8123).http_port == 8123
    with pytest.raises(config.ConfigError):
        config.load(broker__port=65500)  # auto would be past 65535


def test_rate_limit_is_a_bucket_per_client():
    now = [0.0]
    rl = RateLimit(10, clock=lambda: now[0])
    assert sum(rl.allow("a") for _ in range(30)) == 10  # a second's worth, then refused
    assert rl.allow("b")  # another client has its own bucket
    now[0] += 0.5
    assert sum(rl.allow("a") for _ in range(30)) == 5
    assert all(RateLimit(0).allow("a") for _ in range(1000))


def test_ndjson_lines_become_messages_and_empty_lines_are_skipped():
    assert _messages(b"a\r\nb\n\nc", True) == [b"a", b"b", b"c"]
    assert _messages(b"a\nb\n", False) == [b"a\nb\n"]


def test_a_large_body_is_split_into_batches_and_requests_within_the_limits():
    values = [b"x" * 1000] * 5000  # ~5 MB
    reqs = list(_requests(values, b"key", None, max_batch=256 << 10, max_request=1 << 20))
    assert len(reqs) > 1
    got = []
    for frames, last_count in reqs:
        assert sum(map(len, frames)) <= 1 << 20
        assert all(len(f) <= 256 << 10 for f in frames)
        assert batch.peek_count(frames[-1]) == last_count
        for f in frames:
            got += batch.values_of(f)
    assert got == values
    with pytest.raises(BrokerError) as e:
        list(_requests([b"y" * 2000], None, None, max_batch=1024, max_request=4096))
    assert e.value.code == ErrorCode.MESSAGE_TOO_LARGE


def test_quantile_interpolates_within_the_bucket():
    bounds = (1.0, 2.0, 4.0)
    assert quantile([0, 0, 0, 0], bounds, 0.5) is None
    assert quantile([0, 10, 0, 0], bounds, 0.5) == pytest.approx(1.5)
    assert quantile([10, 0, 0, 10], bounds, 0.99) == 4.0  # +Inf bucket: the last bound


def test_sd_notify_sends_to_the_socket_systemd_names(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert s.recv(100) == b"READY=1"
    assert not sdnotify.notify("READY=1", {})


def test_the_curl_script_against_a_real_broker(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "2", "--http-port", str(free_port())))
    b.start()
    try:
        base = b.wait_http()
        script = Path(__file__).with_name("http_gateway.sh")
        r = subprocess.run(["bash", str(script), base], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "ok" in r.stdout
    finally:
        b.stop()


def test_readyz_fails_on_a_sync_master_without_a_slave_in_sync(tmp_path):
    import json
    import time
    import urllib.error
    import urllib.request

    b = BrokerProcess(tmp_path / "data", args=("--role", "master", "--http-port", str(free_port())))
    b.start()
    try:
        base = b.wait_http()
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/readyz", timeout=5)
                status, body = 200, {}
            except urllib.error.HTTPError as e:
                status, body = e.code, json.load(e)
            if body.get("checks", {}).get("acceptors") == "ok" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 503
        assert body["ready"] is False
        assert "0 slave(s) in sync" in body["checks"]["replication"]
        assert body["checks"]["writers"] == "ok"
    finally:
        b.stop()


def test_the_supervisor_tells_systemd_ready_and_stopping(tmp_path):
    import os
    import signal
    import sys

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(60)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "hpbroker", "serve", "--port", str(port), "--data-dir",
                                 str(tmp_path / "data"), "--http-port", "0"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "NOTIFY_SOCKET": str(path)})
        try:
            ready = s.recv(200).decode()
            assert ready.startswith("READY=1") and f"MAINPID={proc.pid}" in ready
            proc.send_signal(signal.SIGTERM)
            assert s.recv(200) == b"STOPPING=1"
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
