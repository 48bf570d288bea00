"""Back-pressure and child death: the broker stays bounded and never acks without a writer."""

from __future__ import annotations

import os
import re
import signal
import time

import psutil

from brokerproc import BrokerProcess
from hpbroker import batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from rawclient import RawClient



def test_slow_disk_gives_busy_not_unbounded_memory(tmp_path):
    cfg = tmp_path / "bp.toml"
    cfg.write_text(
        "[broker]\nmax_batch_bytes = 122880\nmax_request_bytes = 122880\n"
        "[ring]\ncapacity_bytes = 1048576\nfull_timeout_ms = 200\ndead_after_ms = 120000\n"
    )
    b = BrokerProcess(tmp_path / "data", args=("--config", str(cfg))).start()
    try:
        writer = psutil.Process(b.child_pid("writer0"))
        acceptor = psutil.Process(b.child_pid("acceptor0"))
        c = RawClient(b.url, timeout_ms=60_000)
        one = batch.encode_batch([b"p" * 1000] * 60)  # ~60 KiB
        assert c.produce("bp", 0, [one]).code == 0
        writer.suspend()  # the disk stops keeping up
        try:
            n = 40
            for i in range(n):
                c.send_frames(codec.encode_request(m.Produce(id=100 + i, topic="bp", partition=0), [one]))
            busy = {}
            deadline = time.monotonic() + 60
            while len(busy) < n - 20 and time.monotonic() < deadline:
                try:
                    rep, _ = c.recv(timeout_ms=1000)
                except TimeoutError:
                    continue
                assert rep.code == ErrorCode.BUSY, rep
                busy[rep.id] = rep
            # the ring (1 MiB) holds at most ~16 of these; the rest were refused, not buffered
            assert len(busy) >= n - 20
            assert acceptor.memory_info().rss < 400 << 20
        finally:
            writer.resume()
        rest = {}
        while len(busy) + len(rest) < n:
            rep, _ = c.recv(timeout_ms=30_000)
            rest[rep.id] = rep.code
        assert set(rest.values()) == {0}
        got = c.fetch_all("bp", 0)
        assert len(got) == 60 * (1 + len(rest))
        c.close()
    finally:
        assert b.stop() == 0


def test_a_dead_writer_stops_the_broker_and_loses_nothing_acked(tmp_path):
    b = BrokerProcess(tmp_path / "data").start()
    c = RawClient(b.url)
    r = c.produce("dw", 1, [batch.encode_batch([b"before"] * 5)])
    assert r.code == 0
    children = psutil.Process(b.pid).children(recursive=True)
    os.kill(b.child_pid("writer0"), signal.SIGKILL)
    assert b.proc.wait(60) == 1
    assert re.search(r"writer0 \(pid \d+\) died with signal 9; stopping the broker", b.log())
    # multiprocessing's resource tracker notices its parent is gone a moment later
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"processes outlived the broker: {alive}"
    assert not [n for n in os.listdir("/dev/shm") if f".p{b.port}." in n]
    b.stop()
    c.close()
    b2 = BrokerProcess(tmp_path / "data", port=b.port).start()
    try:
        c = RawClient(b2.url)
        assert [x.value for x in c.fetch_all("dw", 1)] == [b"before"] * 5
        c.close()
    finally:
        assert b2.stop() == 0


def test_children_do_not_outlive_a_killed_supervisor(tmp_path):
    b = BrokerProcess(tmp_path / "data").start()
    c = RawClient(b.url)
    assert c.produce("orphan", 0, [batch.encode_batch([b"kept"])]).code == 0
    c.close()
    children = psutil.Process(b.pid).children(recursive=True)
    assert len(children) >= 2
    os.kill(b.pid, signal.SIGKILL)  # only the supervisor
    b.proc.wait(10)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"children outlived the supervisor: {[p.pid for p in alive]}"
    b.stop()
    b2 = BrokerProcess(tmp_path / "data", port=b.port).start()  # and the next start cleans up after it
    try:
        c = RawClient(b2.url)
        assert [r.value for r in c.fetch_all("orphan", 0)] == [b"kept"]
        c.close()
    finally:
        assert b2.stop() == 0
