"""The scrubber (hpbroker/io/scrub.py, hpbroker/broker/scrubber_process.py):
closed segments re-read at a set rate; damaged data fenced, damaged
indexes reported; progress survives a restart."""

from __future__ import annotations

import json
import os
import time

import pytest

from brokerproc import BrokerProcess
from hpbroker.config import LogConfig
from hpbroker.io import PartitionFenced, PartitionLog, Storage, layout
from hpbroker.io.scrub import FINDING, STATE, Scrubber, ScrubState
from hpbroker.io.segment_check import Throttle, check_segment
from hpbroker.io.testing import make_batch

CFG = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16, index_interval_bytes=512)


def make_data(root, partitions=2, n=300):
    with Storage(root, CFG) as st:
        for p in range(partitions):
            log = st.partition("t", p)
            for i in range(n):
                log.append(make_batch(2, 200, ts=5000 + i, tag=i), 0)
            log.flush()
    return root


def flip(path, pos, bit=0x01):
    with open(path, "r+b") as f:
        f.seek(pos)
        c = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([c ^ bit]))


def segs(root, p=0):
    d = str(root / f"t-{p}")
    return d, layout.list_segments(d)


def test_a_clean_pass_reads_every_closed_segment_and_nothing_else(tmp_path):
    make_data(tmp_path)
    s = Scrubber(str(tmp_path), 0, 3600)
    assert s.run_pass() == []
    closed = sum(len(segs(tmp_path, p)[1]) - 1 for p in range(2))
    sizes = sum(os.path.getsize(layout.log_path(*[segs(tmp_path, p)[0], b])) for p in range(2) for b in segs(tmp_path, p)[1][:-1])
    assert (s.state.segments, s.state.bytes, s.state.passes, s.state.findings) == (closed, sizes, 1, 0)
    assert ScrubState.load(str(tmp_path)).passes == 1  # saved


def test_a_flipped_bit_in_a_closed_segment_is_reported_and_fences(tmp_path, caplog):
    make_data(tmp_path)
    d, bases = segs(tmp_path, 1)
    flip(layout.log_path(d, bases[1]), 3000)
    with caplog.at_level("ERROR", logger="hpbroker.scrub"):
        found = Scrubber(str(tmp_path), 0, 3600).run_pass()
    assert [(f.kind, f.path) for f in found] == [("data", layout.log_path(d, bases[1]))]
    assert "damaged batch in t-1" in caplog.text
    record = json.loads(open(os.path.join(d, FINDING)).read())
    assert record["offset"] > bases[1] and "CRC32C mismatch" in record["reason"]
    log = PartitionLog(d, CFG)  # at every open until an operator removes the file
    try:
        assert isinstance(log.fenced, PartitionFenced) and "scrubber found a damaged batch" in str(log.fenced)
        with pytest.raises(PartitionFenced):
            log.append(make_batch(1), 0)
    finally:
        log.close()
    os.unlink(os.path.join(d, FINDING))
    log = PartitionLog(d, CFG)
    assert log.fenced is None  # (recovery trusts the segment below the recovery point, as before)
    log.close()


def test_uncovered_fields_and_indexes_are_checked_too(tmp_path):
    make_data(tmp_path, partitions=1)
    d, bases = segs(tmp_path)
    path = layout.log_path(d, bases[0])
    data = open(path, "rb").read()
    second = int.from_bytes(data[8:12], "little")  # where the second batch starts
    flip(path, second + 2)  # its base_offset: outside the CRC
    found, _, _ = check_segment(path, bases[0], bases[1], None)
    assert found[0].kind == "data" and "base_offset" in found[0].reason
    flip(path, second + 2)
    flip(layout.index_path(d, bases[0]), 8 + 5)  # an index entry's position
    found, _, _ = check_segment(path, bases[0], bases[1], None)
    assert [f.kind for f in found] == ["index"] and found[0].path.endswith(".index")
    found, _, _ = check_segment(path, bases[0], bases[1] + 1, None)
    assert "the next one starts at" in found[0].reason


def test_index_damage_is_reported_but_not_fenced(tmp_path, caplog):
    make_data(tmp_path, partitions=1)
    d, bases = segs(tmp_path)
    flip(layout.timeindex_path(d, bases[0]), 3)  # a timestamp
    with caplog.at_level("WARNING", logger="hpbroker.scrub"):
        found = Scrubber(str(tmp_path), 0, 3600).run_pass()
    assert [f.kind for f in found] == ["index"] and not os.path.exists(os.path.join(d, FINDING))
    assert "damaged index" in caplog.text


def test_a_restart_goes_on_where_the_pass_stopped(tmp_path):
    make_data(tmp_path)
    s = Scrubber(str(tmp_path), 0, 3600)
    s.state.partition, s.state.segment = "t-1", segs(tmp_path, 1)[1][0]
    s._save(force=True)
    s = Scrubber(str(tmp_path), 0, 3600)
    s.run_pass()
    assert s.state.segments == len(segs(tmp_path, 1)[1]) - 2  # t-0 and t-1's first segment were done before


def test_the_throttle_holds_the_rate():
    now = [0.0]
    slept = []

    def wait(s):
        slept.append(s)
        now[0] += s

    t = Throttle(1 << 20, burst=1 << 20, clock=lambda: now[0], wait=wait)
    for _ in range(10):
        t.take(1 << 20)
    assert now[0] == pytest.approx(9.0)  # 10 MiB at 1 MiB/s after a burst of one


def test_a_segment_retention_took_meanwhile_is_no_finding(tmp_path):
    make_data(tmp_path, partitions=1)
    d, bases = segs(tmp_path)
    s = Scrubber(str(tmp_path), 0, 3600)
    from hpbroker.io.segment_check import Finding

    gone = Finding("data", layout.log_path(d, bases[0]), 0, bases[0], "file shorter than expected")
    os.rename(layout.log_path(d, bases[0]), layout.log_path(d, bases[0]) + ".deleted")
    assert not s._confirm(d, gone, bases[0], bases[1], None)


def test_a_broker_fences_what_its_scrubber_finds(tmp_path):
    cfg = tmp_path / "hpbroker.toml"
    cfg.write_text("[log]\nsegment_bytes = 65536\n[scrub]\nrate_bytes = 67108864\npass_interval_ms = 0\n")
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "1", "--config", str(cfg)))
    b.start()
    try:
        from hpbroker.client import Producer
        from hpbroker.client.request import request
        from hpbroker.protocol import messages as m
        from hpbroker.protocol.errors import BrokerError, ErrorCode

        with Producer(b.url, acks=1, linger_ms=0) as p:
            for i in range(400):
                p.send_batch("t", [b"line-%06d" % i + b"." * 300], partition=0).result(10)
            d, bases = str(tmp_path / "data" / "t-0"), layout.list_segments(str(tmp_path / "data" / "t-0"))
            flip(layout.log_path(d, bases[1]), 2000)  # while it runs: the scrubber's next pass meets it
            deadline = time.monotonic() + 30
            err = None
            while time.monotonic() < deadline:
                try:
                    p.send_batch("t", [b"more"], partition=0).result(10)
                except BrokerError as e:
                    err = e
                    break
                time.sleep(0.2)
            assert err is not None and err.code == ErrorCode.PARTITION_FENCED
            assert "scrubber found a damaged batch" in err.message and bases[1] > 0
        stats = request(b.url, lambda i: m.Stats(id=i), 5000).stats
        assert stats["scrub_findings"] == 1 and stats["scrub_passes"] >= 1
        assert "scrub: damaged batch in t-0" in b.log()
    finally:
        b.stop()
    assert os.path.exists(os.path.join(d, FINDING)) and os.path.exists(tmp_path / "data" / STATE)
