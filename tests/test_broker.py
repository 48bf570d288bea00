"""The broker data path end to end: real processes, sockets, rings and files."""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
import time

import psutil
import pytest
import zmq
import zmq.utils.monitor

from brokerproc import BrokerProcess
from hpbroker import batch
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.net.produce import frame_cutoff
from hpbroker.protocol.errors import ErrorCode
from rawclient import RawClient
from zmq.utils.monitor import recv_monitor_message


def values(prefix: bytes, start: int, n: int) -> list[bytes]:
    return [b"%s-%08d" % (prefix, i) for i in range(start, start + n)]


def test_produce_then_fetch_round_trip(broker):
    c = RawClient(broker.url)
    first = c.produce("logs", 1, [batch.encode_batch(values(b"a", 0, 100))])
    assert first.code == 0 and first.base_offsets == [0]
    second = c.produce("logs", 1, [batch.encode_batch(values(b"a", 100, 50)), batch.encode_batch(values(b"a", 150, 5))])
    assert second.code == 0 and second.base_offsets == [100, 150]
    got = c.fetch_all("logs", 1)
    assert [r.offset for r in got] == list(range(155))
    assert [r.value for r in got] == values(b"a", 0, 155)
    # other partitions are untouched
    rep, data = c.fetch("logs", 0, 0)
    assert rep.code == 0 and rep.high_watermark == 0 and data == b""
    c.close()


def test_produce_messages_broker_builds_the_batch(broker):
    c = RawClient(broker.url)
    rep, _ = c.call(m.ProduceMessages(id=c.next_id(), topic="plain", partition=2), [b"one", b"two", b"three"])
    assert rep.code == 0 and rep.base_offsets == [0] and rep.partition == 2
    rep, _ = c.call(m.ProduceMessages(id=c.next_id(), topic="plain", partition=2, keys=True), [b"k1", b"v1", b"", b"v2"])
    assert rep.code == 0 and rep.base_offsets == [3]
    got = c.fetch_all("plain", 2)
    assert [r.value for r in got] == [b"one", b"two", b"three", b"v1", b"v2"]
    assert got[3].key == b"k1"
    c.close()


def test_metadata_list_offsets_and_create_topic(broker):
    c = RawClient(broker.url)
    rep, _ = c.call(m.CreateTopic(id=c.next_id(), topic="eight", partitions=8))
    assert rep.code == 0 and rep.partitions == 8
    rep, _ = c.call(m.CreateTopic(id=c.next_id(), topic="eight", partitions=8))
    assert rep.code == ErrorCode.TOPIC_ALREADY_EXISTS
    rep, _ = c.call(m.Metadata(id=c.next_id(), topics=["eight"]))
    assert rep.acceptors == [broker.url]
    assert [p.partition for p in rep.topics[0].partitions] == list(range(8))
    t0 = batch.now_ms()
    c.produce("eight", 3, [batch.encode_batch([b"x"] * 10, timestamp_ms=t0 - 10_000)])
    c.produce("eight", 3, [batch.encode_batch([b"y"] * 10, timestamp_ms=t0)])
    spec = lambda s: c.call(m.ListOffsets(id=c.next_id(), topic="eight", partition=3, spec=s))[0].offset
    assert spec(m.EARLIEST) == 0
    assert spec(m.LATEST) == 20
    assert spec(t0 - 5_000) == 10
    assert spec(t0 + 60_000) == 20
    c.close()


def test_long_poll_wakes_when_data_arrives(broker):
    consumer, producer = RawClient(broker.url), RawClient(broker.url)
    producer.produce("lp", 0, [batch.encode_batch([b"first"])])
    req = m.Fetch(id=consumer.next_id(), topic="lp", partition=0, offset=1, max_wait_ms=60_000)
    consumer.send_frames(codec.encode_request(req))

    def ask_latest():  # answered in order on this connection: after the fetch's answer, if it has one
        q = m.ListOffsets(id=consumer.next_id(), topic="lp", partition=0, spec=m.LATEST)
        consumer.send_frames(codec.encode_request(q))
        return q.id

    q = ask_latest()
    rep, _ = consumer.recv()
    assert rep.id == q and rep.offset == 1, f"the fetch was answered before it parked: {rep}"  # nothing past 1 yet
    producer.produce("lp", 0, [batch.encode_batch([b"second"])])
    q = ask_latest()  # asked once the data is acknowledged: the woken fetch's answer is already ahead of it
    rep, frames = consumer.recv()
    assert rep.id == req.id, f"the fetch was still parked after the data was acknowledged: {rep}"
    assert rep.code == 0 and rep.high_watermark == 2
    assert batch.values_of(bytes(frames[0])) == [b"second"]
    rep, _ = consumer.recv()
    assert rep.id == q and rep.offset == 2
    consumer.close(), producer.close()


def _corrupt(b: bytearray) -> bytearray:
    b[-1] ^= 0xFF
    return b


@pytest.mark.parametrize(
    "frames, code",
    [
        ([b"\xc1garbage"], ErrorCode.BAD_REQUEST),
        ([b""], ErrorCode.BAD_REQUEST),
    ],
)
def test_garbage_headers_get_an_error_reply(broker, frames, code):
    c = RawClient(broker.url)
    c.send_frames(frames)
    rep, _ = c.recv()
    assert isinstance(rep, m.ErrorReply) and rep.code == code and rep.message
    c.close()


def test_bad_batches_get_error_replies_and_nothing_is_written(broker):
    c = RawClient(broker.url)
    good = batch.encode_batch(values(b"g", 0, 10))
    cases = {
        "crc": (_corrupt(bytearray(good)), ErrorCode.CORRUPT_BATCH),
        "truncated": (bytes(good[:-7]), ErrorCode.CORRUPT_BATCH),
        "header only": (bytes(good[:40]), ErrorCode.CORRUPT_BATCH),
        "length lies": (bytes(good[:8]) + struct.pack("<I", 1 << 30) + bytes(good[12:]), ErrorCode.CORRUPT_BATCH),
    }
    for name, (frame, code) in cases.items():
        rep = c.produce("bad", 0, [good, frame])
        assert rep.code == code, (name, rep)
        assert rep.message
    rep = c.produce("bad", 99, [good])
    assert rep.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    rep, _ = c.call(m.Produce(id=c.next_id(), topic="bad", partition=0))
    assert rep.code == ErrorCode.BAD_REQUEST
    rep, _ = c.fetch("bad", 0, 5)
    assert rep.code == ErrorCode.OFFSET_OUT_OF_RANGE
    # a whole request is refused: the good batch riding with a bad one was not written
    assert c.fetch_all("bad", 0) == []
    assert c.produce("bad", 0, [good]).base_offsets == [0]
    c.close()


def test_oversized_frames(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--config", str(_small_limits(tmp_path))))
    b.start()
    try:
        c = RawClient(b.url)
        big = batch.encode_batch([b"z" * 70_000])
        rep = c.produce("big", 0, [big])
        assert rep.code == ErrorCode.MESSAGE_TOO_LARGE and "65536" in rep.message
        # frames far over the limits still reach the acceptor and get a code
        # (ZMQ_MAXMSGSIZE is 4 x max_request_bytes, at least 64 MiB)
        cutoff = frame_cutoff(262144)
        assert cutoff == 64 << 20
        rep = c.produce("big", 0, [b"\0" * (4 << 20)])
        assert rep.code == ErrorCode.MESSAGE_TOO_LARGE and "262144" in rep.message
        rep = c.produce("big", 0, [b"\0" * cutoff])
        assert rep.code == ErrorCode.MESSAGE_TOO_LARGE
        # the cut-off is per frame: frames below it are answered however large together
        rep = c.produce("big", 0, [b"\0" * (cutoff // 2 + 1)] * 2)
        assert rep.code == ErrorCode.MESSAGE_TOO_LARGE and str(cutoff + 2) in rep.message
        # a frame beyond the cut-off makes ZeroMQ drop that connection, with
        # no reply; the broker goes on serving everyone else
        hostile = RawClient(b.url)
        mon = hostile.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        hostile.send_frames(codec.encode_request(m.Produce(id=1, topic="big", partition=0), [b"\0" * (cutoff + 1)]))
        assert mon.poll(30_000), "the broker kept the connection"
        assert recv_monitor_message(mon)["event"] == zmq.EVENT_DISCONNECTED
        assert not hostile.sock.poll(0)  # the connection that carried the request is gone: no reply can come
        hostile.sock.disable_monitor()
        mon.close()
        ok = c.produce("big", 0, [batch.encode_batch([b"fine"])])
        assert ok.code == 0 and ok.base_offsets == [0]
        hostile.close(), c.close()
    finally:
        assert b.stop() == 0


def _small_limits(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text("[broker]\nmax_batch_bytes = 65536\nmax_request_bytes = 262144\n[ring]\ncapacity_bytes = 4194304\n")
    return p


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("[broker]\nno_such_key = 1\n")
    r = subprocess.run([sys.executable, "-m", "hpbroker", "serve", "--config", str(bad), "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no_such_key" in r.stderr


def test_sigterm_drains_and_leaves_nothing(tmp_path):
    b = BrokerProcess(tmp_path / "data").start()
    children = psutil.Process(b.pid).children(recursive=True)
    assert len(children) >= 2
    c = RawClient(b.url)
    # the topic exists before SIGTERM: when every request below is refused
    # (a loaded machine), the restart must still find it, empty
    c.call(m.Metadata(id=c.next_id(), topics=["drain"]))
    # acks=1 requests in flight when SIGTERM arrives still get an answer
    for i in range(50):
        c.send_frames(codec.encode_request(m.Produce(id=1000 + i, topic="drain", partition=i % 4),
                                           [batch.encode_batch(values(b"d", i * 10, 10))]))
    os.kill(b.pid, signal.SIGTERM)
    answered = {}
    for _ in range(50):
        rep, _ = c.recv(timeout_ms=30_000)
        answered[rep.id] = rep.code
    assert len(answered) == 50
    assert set(answered.values()) <= {0, ErrorCode.BROKER_SHUTTING_DOWN}
    assert b.proc.wait(60) == 0
    # multiprocessing's resource tracker notices its parent is gone a moment later
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"processes outlived the broker: {alive}"
    assert not [n for n in os.listdir("/dev/shm") if f".p{b.port}." in n]
    c.close()
    b._log.close()
    # what was acknowledged is there after a restart
    b2 = BrokerProcess(tmp_path / "data", port=b.port).start()
    try:
        c = RawClient(b2.url)
        acked = sum(10 for code in answered.values() if code == 0)
        total = sum(len(c.fetch_all("drain", p)) for p in range(4))
        assert total == acked
        c.close()
    finally:
        b2.stop()


def _ingest(url: str, topic: str, partitions: int, stop_after: float, cycle: int, conn) -> None:
    """Produce numbered 10-record batches until killed; report acks over a pipe."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    inflight = {}
    seq = 0
    rid = 0
    deadline = time.monotonic() + stop_after
    while time.monotonic() < deadline:
        while len(inflight) < 16:
            p = seq % partitions
            vals = [b"%d:%d:%d" % (cycle, seq, j) for j in range(10)]
            rid += 1
            s.send_multipart(codec.encode_request(m.Produce(id=rid, topic=topic, partition=p), [batch.encode_batch(vals)]))
            inflight[rid] = (p, seq)
            seq += 1
        if s.poll(1000):
            rep, _ = codec.decode_reply(s.recv_multipart())
            p, sq = inflight.pop(rep.id)
            if rep.code == 0:
                conn.send((cycle, p, sq, rep.base_offsets[0]))
    conn.close()


def test_kill_9_during_ingest_loses_no_acknowledged_message(tmp_path):
    data = tmp_path / "data"
    port = None
    acked: dict[tuple[int, int, int], int] = {}
    mp = multiprocessing.get_context("spawn")
    for cycle in range(3):
        b = BrokerProcess(data, port=port).start()
        port = b.port
        parent, child = mp.Pipe(duplex=False)
        prod = mp.Process(target=_ingest, args=(b.url, "crash", 4, 300.0, cycle, child))
        prod.start()
        child.close()
        # mid-ingest: once this cycle's producer has had acks (more each cycle,
        # so the kill lands at a different point), with 16 batches in flight
        want, got = 50 * (cycle + 1), 0
        deadline = time.monotonic() + 120
        while got < want:
            assert time.monotonic() < deadline and prod.is_alive(), f"cycle {cycle}: {got} acks in 120 s"
            if parent.poll(0.1):
                cy, p, sq, off = parent.recv()
                acked[(cy, p, sq)] = off
                got += 1
        b.kill()  # kill -9 of the broker's whole process group mid-ingest
        prod.kill()
        prod.join(10)
        while parent.poll():
            try:
                cy, p, sq, off = parent.recv()
            except EOFError:
                break
            acked[(cy, p, sq)] = off
        parent.close()
    assert len(acked) >= 50 + 100 + 150
    b = BrokerProcess(data, port=port).start()
    try:
        c = RawClient(b.url)
        for p in range(4):
            recs = c.fetch_all("crash", p)
            assert [r.offset for r in recs] == list(range(len(recs))), "offsets must stay contiguous"
            by_seq = {}
            for r in recs:
                cy, sq, j = map(int, r.value.split(b":"))
                by_seq.setdefault((cy, sq), []).append((r.offset, j))
            for (cy, ap, sq), off in acked.items():
                if ap != p:
                    continue
                sq = (cy, sq)
                entries = by_seq.get(sq)
                assert entries is not None, f"acknowledged batch {sq} on partition {p} is missing"
                assert entries == [(off + j, j) for j in range(10)], f"batch {sq} is not there exactly once"
            # nothing half-written: every batch is whole
            assert all(len(v) == 10 for v in by_seq.values())
        c.close()
    finally:
        assert b.stop() == 0
