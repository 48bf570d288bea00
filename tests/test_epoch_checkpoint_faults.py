"""The writer when the leader-epoch checkpoint cannot be written.

The writer records a batch's epoch before the batch can be acknowledged.
When that write fails, the request fails (no ack) and the epoch is written
again with the next batch of that epoch; no batch of an epoch the file does
not name is ever acknowledged.  Real storage and a real group commit in
``tmp_path``, faults from :class:`FaultyFileSystem`, a ZeroMQ inproc PULL for
the completions; ring records are built with the acceptors' handoff code
and handed to :meth:`DiskWriter.on_record` directly."""

from __future__ import annotations

import errno

import pytest
import zmq

from hpbroker.broker.completion_reporter import CompletionReporter
from hpbroker.broker.disk_writer import DiskWriter, FlushWakeup
from hpbroker.config import LogConfig
from hpbroker.io import FaultyFileSystem, GroupCommit, Storage
from hpbroker.io.epochs import EpochCache
from hpbroker.io.testing import make_batch
from hpbroker.ipc import completions as ipc_completions
from hpbroker.ipc import handoff
from hpbroker.protocol.errors import ErrorCode
from hpbroker.ring import ReaderGroup

CFG = LogConfig(segment_bytes=1 << 20, write_buffer_bytes=1 << 18, flush_batches=0, flush_bytes=0)


def produce(w: DiskWriter, token: int, batch: bytes, epoch: int) -> None:
    buf = bytearray(handoff.record_size(b"t", len(batch)))
    handoff.write_record(buf, token, b"t", 0, [batch], epoch=epoch)
    w.on_record(0, handoff.PRODUCE, memoryview(buf))


def completions(sock) -> dict[int, int]:
    out = {}
    while sock.poll(200):
        for token, code, *_ in ipc_completions.decoder.decode(sock.recv()).done:
            out[token] = code
    return out


def test_a_batch_whose_epoch_cannot_be_recorded_is_not_acknowledged(tmp_path):
    fs = FaultyFileSystem()
    ctx = zmq.Context()
    storage = Storage(tmp_path, CFG, fs=fs)
    try:
        comp = ctx.socket(zmq.PULL)
        comp.bind("inproc://comp")
        push = ctx.socket(zmq.PUSH)
        push.connect("inproc://comp")
        w = DiskWriter(storage, GroupCommit(CFG), ReaderGroup([], wait=object()), CompletionReporter(0, [push]),
                       FlushWakeup())
        produce(w, 1, make_batch(2), epoch=3)
        w.commit_now()
        assert completions(comp) == {1: 0}

        fs.fail("fsync", errno.EIO, path="leader-epoch-checkpoint.tmp")  # write_atomic fsyncs and renames the tmp file
        produce(w, 2, make_batch(2, tag=1), epoch=1027)
        w.commit_now()
        assert completions(comp) == {2: int(ErrorCode.INTERNAL)}
        plog = storage.partition("t", 0)
        assert plog.log_end_offset == 2  # the batch was not appended
        assert EpochCache(plog.dir, 1 << 62).entries == [(3, 0)]

        produce(w, 3, make_batch(2, tag=2), epoch=1027)  # the disk works again
        w.commit_now()
        assert completions(comp) == {3: 0}
        assert EpochCache(plog.dir, 1 << 62).entries == [(3, 0), (1027, 2)]
    finally:
        storage.close()
        ctx.destroy(linger=0)


def test_a_cut_whose_epochs_cannot_be_rewritten_raises_and_keeps_the_old_checkpoint(tmp_path):
    """Storage.truncate passes its FileSystem down to the epoch checkpoint,
    and a failed rewrite of it is raised to the caller."""
    fs = FaultyFileSystem()
    with Storage(tmp_path, CFG, fs=fs) as st:
        plog = st.partition("t", 0)
        cache = EpochCache(plog.dir, plog.log_end_offset, fs)
        for epoch in (3, 1027):
            cache.assign(epoch, plog.log_end_offset)
            plog.append(make_batch(2), epoch)
        plog.flush()
        assert plog.log_end_offset == 4
        fs.fail("rename", errno.EIO, path="leader-epoch-checkpoint.tmp")  # write_atomic fsyncs and renames the tmp file
        with pytest.raises(OSError) as e:
            st.truncate("t", 0, 2)
        assert e.value.errno == errno.EIO
        # the log was cut before the checkpoint write failed; the file still
        # names the cut epoch, which a cache loaded at the new log end drops
        assert EpochCache(plog.dir, 1 << 62).entries == [(3, 0), (1027, 2)]
        plog = st.partition("t", 0)
        assert plog.log_end_offset == 2
        assert EpochCache(plog.dir, plog.log_end_offset).entries == [(3, 0)]
