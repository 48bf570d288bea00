"""The HTTP port of a real broker: gateway, errors and limits, health, metrics, dashboard API."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokerproc import BrokerProcess, free_port
from hpbroker import Consumer

CONFIG = """
[http]
rate_limit_per_s = 40
max_body_bytes = 65536
poll_ms = 200
"""


@pytest.fixture(scope="module")
def hb(tmp_path_factory):
    d = tmp_path_factory.mktemp("http")
    cfg = d / "broker.toml"
    cfg.write_text(CONFIG)
    b = BrokerProcess(d / "data", args=("--partitions", "4", "--config", str(cfg), "--http-port", str(free_port())))
    b.start()
    try:
        b.wait_http()
        yield b
    finally:
        b.stop()


@pytest.fixture
def http(hb):
    with httpx.Client(base_url=hb.http_url, timeout=30) as c:
        yield c


def _lines(resp) -> list[dict]:
    return [json.loads(line) for line in resp.text.splitlines()]


def _error(resp) -> dict:
    assert resp.headers["content-type"].startswith("application/json")
    return resp.json()["error"]


def test_health_and_readiness(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 20
    while True:  # the first admin poll takes a moment after start
        r = http.get("/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True
    assert body["checks"]["writers"] == "ok" and body["checks"]["acceptors"] == "ok"


def test_produce_one_message_with_a_key_and_headers_then_consume_it(http, hb):
    r = http.post("/topics/gw1", content=b"\x00binary\xff", headers={"X-Hpbroker-Key": "user-7",
                                                                      "X-Hpbroker-Header-Trace": "abc"})
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["count"] == 1 and ack["base_offset"] == ack["last_offset"]
    same_key = http.post("/topics/gw1?key=user-7", content=b"second").json()
    assert same_key["partition"] == ack["partition"]  # a key picks its partition as the Python producer does
    got = _lines(http.get(f"/topics/gw1/partitions/{ack['partition']}", params={"offset": ack["base_offset"]}))
    assert [base64.b64decode(x["value"]) for x in got] == [b"\x00binary\xff", b"second"]
    assert got[0]["key"] == base64.b64encode(b"user-7").decode()
    assert got[0]["headers"] == [["trace", base64.b64encode(b"abc").decode()]]
    assert got[0]["offset"] == ack["base_offset"] and got[1]["offset"] == ack["base_offset"] + 1
    assert abs(got[0]["timestamp"] / 1000 - time.time()) < 600
    # the same bytes through the ZeroMQ client: the gateway's ack meant the message is in the log
    c = Consumer(hb.url, "gw1", partitions=[ack["partition"]], auto_offset_reset="earliest")
    try:
        msgs = []
        deadline = time.monotonic() + 20
        while len(msgs) < 2 and time.monotonic() < deadline:
            msgs += c.poll(timeout_ms=500)
    finally:
        c.close()
    assert [m.value for m in msgs][:2] == [b"\x00binary\xff", b"second"]


def test_ndjson_body_is_one_message_per_line_in_order(http):
    lines = [json.dumps({"n": i, "host": "h1"}).encode() for i in range(500)]
    r = http.post("/topics/gw2/partitions/1", content=b"\n".join(lines) + b"\n\n",
                  headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["partition"] == 1 and ack["count"] == 500
    assert ack["last_offset"] - ack["base_offset"] == 499
    resp = http.get("/topics/gw2/partitions/1", params={"offset": "earliest", "format": "text"})
    got = _lines(resp)
    assert [json.loads(x["value"])["n"] for x in got] == list(range(500))
    assert int(resp.headers["X-Hpbroker-Next-Offset"]) == ack["last_offset"] + 1
    assert int(resp.headers["X-Hpbroker-High-Watermark"]) == ack["last_offset"] + 1


def test_long_poll_returns_what_arrives_while_it_waits(http, hb):
    http.post("/topics/gw3/partitions/0", content=b"first")
    end = int(http.get("/topics/gw3/partitions/0", params={"offset": "latest"}).headers["X-Hpbroker-Next-Offset"])

    def later():
        time.sleep(0.5)
        httpx.post(f"{hb.http_url}/topics/gw3/partitions/0", content=b"late", timeout=30)

    t = threading.Thread(target=later)
    t.start()
    resp = http.get("/topics/gw3/partitions/0", params={"offset": end, "wait_ms": 20_000, "format": "text"})
    t.join()
    assert [x["value"] for x in _lines(resp)] == ["late"]


def test_errors_are_json_with_the_protocol_codes(http):
    http.post("/topics/gw4", content=b"x")
    e = http.get("/topics/gw4/partitions/99", params={"offset": 0})
    assert e.status_code == 404 and _error(e)["code"] == 1 and _error(e)["name"] == "UNKNOWN_TOPIC_OR_PARTITION"
    e = http.post("/topics/gw4/partitions/7", content=b"x")
    assert e.status_code == 404 and _error(e)["code"] == 1
    e = http.get("/topics/gw4/partitions/0", params={"offset": "soon"})
    assert e.status_code == 400 and _error(e)["code"] == 7
    e = http.get("/topics/gw4/partitions/0", params={"offset": 10**9})
    assert e.status_code == 416 and _error(e)["name"] == "OFFSET_OUT_OF_RANGE"
    e = http.post("/topics/gw4", content=b"a" * 70_000)  # http.max_body_bytes = 65536
    assert e.status_code == 413 and _error(e)["code"] == 2
    e = http.post("/topics/gw4", content=b"\n\n", headers={"Content-Type": "application/x-ndjson"})
    assert e.status_code == 400 and "no message" in _error(e)["message"]
    e = http.post("/topics/__consumer_offsets", content=b"x")
    assert e.status_code == 400 and _error(e)["code"] == 7
    e = http.post("/topics/gw4?acks=2", content=b"x")
    assert e.status_code == 400


def test_rate_limit_answers_429_busy_and_the_broker_serves_on(http):
    codes = [http.get("/topics/gw5/partitions/0", params={"offset": "earliest"}).status_code for _ in range(120)]
    assert 429 in codes
    time.sleep(1.1)  # the bucket refills
    r = http.post("/topics/gw5", content=b"after")
    assert r.status_code == 200
    limited = http.get("/topics/gw5/partitions/0")  # fine again, or still limited: either way JSON
    assert limited.status_code in (200, 429)
    assert http.get("/metrics").status_code == 200  # never limited


def test_metrics_parse_and_count_a_known_produce(http):
    body = b"\n".join(b"m%d" % i for i in range(37))
    ack = http.post("/topics/gw6/partitions/2", content=body, headers={"Content-Type": "application/x-ndjson"}).json()
    families = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the topic list comes with the next admin poll
        text = http.get("/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        got = [s for s in families["hpbroker_messages_in"].samples
               if s.labels == {"topic": "gw6", "partition": "2"} and s.name.endswith("_total")]
        if got:
            break
        time.sleep(0.2)
    assert got and got[0].value == ack["last_offset"] + 1 == 37
    end = [s.value for s in families["hpbroker_log_end_offset"].samples if s.labels == {"topic": "gw6", "partition": "2"}]
    assert end == [37.0]
    for name in ("hpbroker_produce_ack_latency_seconds", "hpbroker_group_commit_batches", "hpbroker_fdatasync_seconds",
                 "hpbroker_requests", "hpbroker_ring_used_bytes", "hpbroker_process_cpu_seconds",
                 "hpbroker_process_resident_memory_bytes", "hpbroker_replication_role", "hpbroker_leader_epoch",
                 "hpbroker_backpressure_events", "hpbroker_consumer_group_lag"):
        assert name in families, name
    assert {s.labels["ring"] for s in families["hpbroker_ring_capacity_bytes"].samples}, "no ring listed"
    count = [s.value for s in families["hpbroker_produce_ack_latency_seconds"].samples if s.name.endswith("_count")]
    assert count[0] >= 1
    procs = {s.labels["process"] for s in families["hpbroker_process_cpu_seconds"].samples}
    assert {"supervisor", "http", "acceptor0", "writer0"} <= procs
    errors = {(s.labels["request"], s.labels["code"]) for s in families["hpbroker_requests"].samples}
    assert ("produce", "OK") in errors and ("fetch", "OK") in errors


def test_dashboard_api_serves_every_documented_route(http):
    http.post("/topics/gw7/partitions/0", content=b"x")
    assert "chart.js" in http.get("/").text
    o = http.get("/api/overview").json()
    assert o["role"] in ("standalone", "") and o["data_dir"].endswith("data") and o["disk_free_bytes"] > 0
    deadline = time.monotonic() + 20
    while not any(r["topic"] == "gw7" for r in http.get("/api/topics").json()) and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = [r for r in http.get("/api/topics").json() if r["topic"] == "gw7"]
    assert [r["partition"] for r in rows] == [0, 1, 2, 3] and rows[0]["log_end"] == 1
    assert isinstance(http.get("/api/groups").json(), list)
    assert http.get("/api/replication").json()["replication_role"] == "standalone"
    assert http.get("/api/config").json()["http"]["rate_limit_per_s"] == 40
    assert any("serving on" in line["text"] for line in http.get("/api/logs").json())
    assert http.get("/api/history").json()
    assert {p["process"] for p in http.get("/api/processes").json()} >= {"supervisor", "http", "writer0"}


def test_a_killed_http_process_is_started_again_and_the_broker_keeps_serving(hb, http):
    pid = hb.child_pid("http")
    os.kill(pid, signal.SIGKILL)
    from hpbroker import Producer

    with Producer(hb.url) as p:  # the data path does not notice
        p.send("gw8", b"while http is down").get(timeout=30)
    deadline = time.monotonic() + 30
    while hb.child_pid("http") == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hb.child_pid("http") != pid
    hb.wait_http()
    assert http.get("/healthz").status_code == 200
