"""A real Prometheus (Debian's package, tests/servers.py) scrapes a broker's /metrics."""

from __future__ import annotations

import time
import urllib.request

from brokerproc import BrokerProcess, free_port


def test_prometheus_scrapes_the_broker_and_sees_a_known_produce(tmp_path, prometheus_server):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "2", "--http-port", str(free_port())))
    b.start()
    try:
        base = b.wait_http()
        req = urllib.request.Request(f"{base}/topics/scraped/partitions/1", data=b"\n".join(b"v%d" % i for i in range(25)),
                                     headers={"Content-Type": "application/x-ndjson"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        prometheus_server.set_targets([base.removeprefix("http://")])
        expr = 'hpbroker_messages_in_total{topic="scraped",partition="1"}'
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline:
            result = prometheus_server.query(expr)
            if result:
                break
            time.sleep(0.5)
        assert result, f"no {expr} in Prometheus; targets: {prometheus_server.active_targets()}"
        assert float(result[0]["value"][1]) == 25
        assert result[0]["metric"]["job"] == "hpbroker"
        up = prometheus_server.query(f'up{{instance="{base.removeprefix("http://")}"}}')
        assert up and up[0]["value"][1] == "1"
    finally:
        prometheus_server.set_targets([])
        b.stop()
