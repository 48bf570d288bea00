"""The raw pyzmq examples work as docs/protocol.md says, against a real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hpbroker import Consumer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_raw_producer_then_hpbroker_consumer(broker):
    lines = [b"raw %d" % i for i in range(2500)]
    r = subprocess.run([sys.executable, EXAMPLES / "raw_producer.py", broker.url, "rawex"],
                       input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with Consumer(broker.url, "rawex", auto_offset_reset="earliest") as c:
        got = []
        for _ in range(100):
            if len(got) >= len(lines):
                break
            got += c.poll(timeout_ms=500, max_records=10_000)
    assert sorted(m.value for m in got) == sorted(lines)


def test_raw_consumer_prints_what_was_produced(broker):
    from hpbroker import Producer

    values = [b"v%d" % i for i in range(300)]
    with Producer(broker.url) as p:
        p.send_batch("rawc", values[:100], partition=0)
        p.send_batch("rawc", values[100:], partition=3)
        p.flush(60)
    r = subprocess.run([sys.executable, EXAMPLES / "raw_consumer.py", broker.url, "rawc", "1000"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split(b"\n")[:-1]) == sorted(values)
