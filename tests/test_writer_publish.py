"""A master's writer publishing each group-commit round as it starts, and a slave splitting it.

Real storage (O_DIRECT where the filesystem allows it), a real group commit
and real ZeroMQ PUB/SUB/PULL sockets over inproc; the ring is left out: ring
records are built with the same handoff code the acceptors use and handed
to :meth:`DiskWriter.on_record` directly."""

from __future__ import annotations

import errno
import threading
import time

import pytest
import zmq
from msgspec.structs import astuple

from hpbroker import batch as B
from hpbroker.broker.completion_reporter import CompletionReporter
from hpbroker.broker.disk_writer import DiskWriter, FlushWakeup
from hpbroker.broker.round_publisher import ARENA_BYTES, RoundPublisher
from hpbroker.config import LogConfig
from hpbroker.io import FaultyFileSystem, GroupCommit, PartitionFenced, Storage
from hpbroker.io.testing import make_batch
from hpbroker.ipc import completions, handoff
from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol.errors import ErrorCode
from hpbroker.replication.slave import split_batches
from hpbroker.ring import ReaderGroup

CFG = LogConfig(segment_bytes=1 << 20, write_buffer_bytes=1 << 18, flush_batches=0, flush_bytes=0)


class Rig:
    """A replicated broker's writer 0, with one acceptor: a master's, or
    (``master=False``) a slave's, which publishes once promoted."""

    def __init__(self, tmp_path, fs=None, *, master=True, clock=None, report_every_s=0.0, arena_bytes=ARENA_BYTES,
                 connect_acks=None):
        self.ctx = zmq.Context()
        self.storage = Storage(tmp_path, CFG, fs=fs)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"B")
        self.feed_in = self.ctx.socket(zmq.PULL)
        pub = self.ctx.socket(zmq.PUB)
        pub.bind("inproc://pub")
        self.sub.connect("inproc://pub")
        self.feed_in.bind("inproc://feed")
        feed = self.ctx.socket(zmq.PUSH)
        feed.connect("inproc://feed")
        self.comp_in = self.ctx.socket(zmq.PULL)
        self.comp_in.bind("inproc://comp")
        push = self.ctx.socket(zmq.PUSH)
        push.connect("inproc://comp")
        self.repl_comp = self.ctx.socket(zmq.PULL)  # a master's replicator: the last push
        self.repl_comp.bind("inproc://repl-comp")
        to_repl = self.ctx.socket(zmq.PUSH)
        to_repl.connect("inproc://repl-comp")
        group_commit = GroupCommit(CFG)
        reporter = CompletionReporter(0, [push, to_repl], replicated=True, report_every_s=report_every_s,
                                      clock=clock or time.monotonic, connect_master_acceptors=connect_acks)
        make_publisher = lambda: RoundPublisher(self.storage, group_commit, pub, feed, arena_bytes=arena_bytes)
        self.w = DiskWriter(self.storage, group_commit, ReaderGroup([], wait=object()), reporter, FlushWakeup(),
                            publisher=make_publisher() if master else None, make_publisher=make_publisher)
        self.token = 0

    def produce(self, partition: int, *batches: bytes, epoch: int = 3, kind: int = handoff.PRODUCE) -> int:
        self.token += 1
        size = handoff.record_size(b"t", sum(len(b) for b in batches))
        buf = bytearray(size)
        handoff.write_record(buf, self.token, b"t", partition, list(batches), epoch=epoch)
        self.w.on_record(0, kind, memoryview(buf))
        return self.token

    def completions(self) -> dict[int, int]:
        """token -> error code (0 = durable) of every request reported so far."""
        out = {}
        while self.comp_in.poll(100):
            for token, code, *_ in completions.decoder.decode(self.comp_in.recv()).done:
                out[token] = code
        return out

    def published(self) -> list[tuple]:
        out = []
        while self.sub.poll(200):
            frames = self.sub.recv_multipart()
            out.append((frames[1], frames[2:]))
        return out

    def close(self):
        self.storage.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def published(raw: bytes) -> list[tuple]:
    """A writer's note to its replicator, as (topic, partition, hwm, bytes) tuples."""
    return [astuple(p) for p in ipc_replica.published_decoder.decode(raw)]


def recv(sock) -> bytes:
    """The next message on ``sock``; a test fails, rather than hangs, when none comes."""
    assert sock.poll(2000), "no message came"
    return sock.recv()


def log_bytes(storage, partition: int) -> bytes:
    plog = storage.partition("t", partition)
    return bytes(plog.read(0, 1 << 22, plog.high_watermark))


def test_one_chunk_per_partition_and_flush_byte_identical_to_the_log(rig):
    sent = [make_batch(5, tag=i) for i in range(6)]
    rig.produce(0, sent[0], sent[1])
    rig.produce(1, sent[2])
    rig.produce(0, sent[3], sent[4])
    rig.w.commit_now()
    msgs = rig.published()
    assert len(msgs) == 2  # one message per partition for the whole round
    by_partition = {}
    for meta, chunks in msgs:
        topic, partition, hwm = handoff_meta(meta)
        assert len(chunks) == 1  # the round's batches are contiguous in the partition's arena
        by_partition[partition] = (hwm, chunks[0])
    hwm0, chunk0 = by_partition[0]
    assert hwm0 == 20
    # byte for byte what the master's log holds: offsets and epochs stamped, CRCs intact
    assert chunk0 == log_bytes(rig.storage, 0)
    views = split_batches([chunk0])
    assert [B.peek_base_offset(v) for v in views] == [0, 5, 10, 15]
    assert all(B.peek_epoch(v) == 3 for v in views)
    for v in views:
        B.check_batch(v, 0, len(v))
    assert by_partition[1] == (5, log_bytes(rig.storage, 1))
    # the replicator hears what was published, one note per flush, byte counts included
    assert sorted(published(recv(rig.feed_in))) == [("t", 0, 20, len(chunk0)),
                                                                     ("t", 1, 5, len(by_partition[1][1]))]

    # the acceptor hears of every flush; a master's replicator only from the publish note above
    assert rig.comp_in.poll(200) and not rig.repl_comp.poll(200)
    rig.w.report(rig.storage.logs())  # the periodic full report still reaches it
    assert rig.repl_comp.poll(1000)

    # a second round: only its own batches, starting where the first ended
    rig.produce(0, sent[5])
    rig.w.commit_now()
    (meta, chunks), = rig.published()
    assert handoff_meta(meta) == ("t", 0, 25)
    assert [B.peek_base_offset(v) for v in split_batches(chunks)] == [20]
    assert b"".join(chunks) == log_bytes(rig.storage, 0)[len(chunk0):]


def test_a_round_larger_than_an_arena_goes_out_in_order_in_several_chunks(tmp_path, request):
    rig = Rig(tmp_path, arena_bytes=256 << 10)
    request.addfinalizer(rig.close)
    big = [make_batch(200, size=300, tag=i) for i in range(8)]  # ~62 KiB each
    for b in big:
        rig.produce(2, b)
    rig.w.commit_now()
    (meta, chunks), = rig.published()
    assert handoff_meta(meta) == ("t", 2, 1600)
    assert len(chunks) == 2  # the fifth batch did not fit the first arena
    assert b"".join(chunks) == log_bytes(rig.storage, 2)
    assert [B.peek_base_offset(v) for v in split_batches(chunks)] == [200 * i for i in range(8)]


def test_a_round_goes_out_as_it_starts_and_a_failed_one_is_never_acknowledged(tmp_path):
    fs = GatedFileSystem()
    rig = Rig(tmp_path, fs)
    try:
        rig.produce(0, make_batch(2))
        rig.produce(1, make_batch(2))
        rig.w.commit_now()
        assert len(rig.published()) == 2
        recv(rig.feed_in)
        fs.fail("fdatasync", errno.EIO, path="t-0")
        t0 = rig.produce(0, make_batch(3, tag=1))
        t1 = rig.produce(1, make_batch(3, tag=2))
        fs.gate.clear()  # hold the I/O threads in pwrite, so the failure cannot come before the publish
        rig.w.commit()  # pipelined: the round is published as the I/O threads start on it
        msgs = rig.published()
        assert sorted(handoff_meta(meta) for meta, _ in msgs) == [("t", 0, 5), ("t", 1, 5)]
        fs.gate.set()
        rig.w.commit_now()  # collect the round's outcome
        codes = rig.completions()
        # the slaves got partition 0's round, but the master acknowledges none of it
        assert codes[t0] != 0 and codes[t1] == 0
        assert rig.storage.partition("t", 0).fenced is not None
        # the fenced partition takes nothing more and sends nothing more
        t2 = rig.produce(0, make_batch(1, tag=3))
        rig.w.commit_now()
        assert rig.completions()[t2] != 0
        assert rig.published() == []
        # the replicator hears the fenced partition's round failed (hwm -1) and the other's hwm
        notes = sorted(published(recv(rig.feed_in)))
        assert [(t, p, hwm) for t, p, hwm, _ in notes] == [("t", 0, -1), ("t", 1, 5)]
    finally:
        rig.close()


class GatedFileSystem(FaultyFileSystem):
    """Faults plus a gate: pwrite waits while ``gate`` is clear, so a test can
    see what the writer does while the I/O thread is still on a round."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def pwrite(self, fd, buf, pos):
        assert self.gate.wait(10), "the test never opened the gate"
        return super().pwrite(fd, buf, pos)


def test_enospc_fences_a_publishing_partition_instead_of_reusing_its_offsets(tmp_path):
    """ENOSPC normally rolls a log back and keeps it writable (test_storage_faults);
    a master's round may be at the slaves already, so assigning its offsets to
    other batches would fork the two logs inside one epoch: fence instead."""
    fs = GatedFileSystem()
    rig = Rig(tmp_path, fs)
    try:
        rig.produce(0, make_batch(2))
        rig.w.commit_now()
        assert len(rig.published()) == 1
        fs.fail("pwrite", errno.ENOSPC, path="t-0")
        fs.gate.clear()  # hold the I/O thread's pwrite until the round is out
        t1 = rig.produce(0, make_batch(3, tag=1))
        rig.w.commit()  # pipelined: published as the I/O thread starts on it
        (meta, chunks), = rig.published()
        assert handoff_meta(meta) == ("t", 0, 5)  # went out before the disk refused it
        fs.gate.set()
        rig.w.commit_now()  # collect the round's outcome
        assert rig.completions()[t1] != 0
        plog = rig.storage.partition("t", 0)
        assert isinstance(plog.fenced, PartitionFenced) and plog.high_watermark == 2
        t2 = rig.produce(0, make_batch(1, tag=2))
        rig.w.commit_now()
        assert rig.completions()[t2] != 0 and rig.published() == []  # offset 2 is never assigned again
    finally:
        rig.close()


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_reports_nobody_waits_for_go_out_at_most_every_writer_report_ms(tmp_path):
    clock = FakeClock()
    rig = Rig(tmp_path / "master", clock=clock, report_every_s=0.005)
    try:
        w = rig.w
        # a master: its acceptor hears every flush at once; the replicator's notes wait
        rig.produce(0, make_batch(2))
        w.commit_now()
        rig.produce(0, make_batch(3, tag=1))
        w.commit_now()
        assert len(rig.completions()) == 2
        assert not rig.feed_in.poll(100)
        clock.t += 0.005
        w.report()
        (note,) = published(recv(rig.feed_in))
        assert note[:3] == ("t", 0, 5) and note[3] == len(log_bytes(rig.storage, 0))  # both rounds, one note
        assert not rig.feed_in.poll(100)

        # a slave: what its writer tells its own acceptors and replicator waits too
        rig.close()
        rig = Rig(tmp_path / "slave", master=False, clock=clock, report_every_s=0.005)
        w = rig.w
        t1 = rig.produce(1, make_batch(2))
        w.commit_now()
        t2 = rig.produce(1, make_batch(2, tag=1))
        w.commit_now()
        assert not rig.comp_in.poll(100) and not rig.repl_comp.poll(100)
        clock.t += 0.005
        w.report()
        c = completions.decoder.decode(recv(rig.comp_in))  # both requests, one report
        assert [d[0] for d in c.done] == [t1, t2] and c.hwm["t/1"] == 4
        c = completions.decoder.decode(recv(rig.repl_comp))  # the watermark, once
        assert c.done == [] and c.hwm["t/1"] == 4
        assert not rig.comp_in.poll(100) and not rig.repl_comp.poll(100)
        # an error is not held back: a replicated batch that does not start at the log end
        t3 = rig.produce(1, make_batch(1), kind=handoff.REPLICA)
        w.report()
        c = completions.decoder.decode(recv(rig.comp_in))
        assert [(d[0], d[1]) for d in c.done] == [(t3, ErrorCode.OFFSET_OUT_OF_RANGE)]
    finally:
        rig.close()


def test_split_batches_yields_each_batch_and_a_torn_rest_as_one_piece():
    a, b = make_batch(2), make_batch(7, tag=1)
    views = split_batches([a + b, b])
    assert [bytes(v) for v in views] == [a, b, b]
    torn = split_batches([a + b[:100]])
    assert [len(v) for v in torn] == [len(a), 100]
    with pytest.raises(B.CorruptBatch):
        B.check_batch(torn[1], 0, len(torn[1]), table=False)
    assert [len(v) for v in split_batches([a + b"\0" * 10])] == [len(a), 10]


def test_a_replica_check_is_the_crc_not_the_record_table():
    good = bytearray(make_batch(3))
    # a record table whose lengths do not add up, under a CRC recomputed to match
    bad = bytearray(good)
    B._I.pack_into(bad, B.HEADER_SIZE + 8, 5)  # first record's value_length
    B._I.pack_into(bad, B.CRC_AT, B.compute_crc(bad))
    with pytest.raises(B.CorruptBatch, match="record table"):
        B.check_batch(bad, 0, len(bad))
    assert B.check_batch(bad, 0, len(bad), table=False).record_count == 3  # the master's acceptor's job
    flipped = bytearray(good)
    flipped[-1] ^= 1
    with pytest.raises(B.CorruptBatch, match="CRC32C"):
        B.check_batch(flipped, 0, len(flipped), table=False)


def handoff_meta(meta: bytes):
    return astuple(ipc_replica.feed_meta_decoder.decode(meta))



def test_a_slave_writer_reports_each_flush_to_the_master_acceptors_until_promoted(tmp_path):
    rig = Rig(tmp_path, master=False, connect_acks=lambda eps: [connect_push(rig.ctx, ep) for ep in eps])  # a slave's writer
    try:
        acks_in = rig.ctx.socket(zmq.PULL)
        acks_in.bind("inproc://acceptor-acks")
        w = rig.w
        w.on_record(0, handoff.ACK_TO, ack_to_record(handoff.AckTo(epoch=4, slave_id=2, endpoints=["inproc://acceptor-acks"])))
        rig.produce(0, make_batch(3))
        rig.produce(1, make_batch(2))
        w.commit_now()
        assert acks_in.poll(1000)
        ack = ipc_replica.slave_ack_decoder.decode(recv(acks_in))
        assert ack == ipc_replica.SlaveAck(slave_id=2, epoch=4, durable={"t/0": 3, "t/1": 2})
        w.promote()  # promoted: it must stop speaking as a slave
        rig.produce(0, make_batch(1))
        w.commit_now()
        assert not acks_in.poll(300) and w.reporter.master_acceptors == []
    finally:
        rig.close()


def connect_push(ctx, endpoint):
    s = ctx.socket(zmq.PUSH)
    s.connect(endpoint)
    return s


def ack_to_record(msg) -> memoryview:
    payload = handoff.ack_to_encoder.encode(msg)
    buf = bytearray(handoff.record_size(b"", len(payload)))
    handoff.write_record(buf, 0, b"", 0, [payload])
    return memoryview(buf)
