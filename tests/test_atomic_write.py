"""The one atomic file write (tmp file, write, fsync, rename, fsync of the
directory) and the four small files written with it: the recovery point,
the leader-epoch checkpoint, ``topics.json`` and ``broker-state.json``.

Real files in ``tmp_path``; faults come from :class:`FaultyFileSystem`, the
thin layer around the real calls.  A write that fails raises, leaves the
previous file readable and byte-for-byte intact, and leaves no tmp file."""

from __future__ import annotations

import errno
import os

import pytest

from hpbroker.broker import state as broker_state
from hpbroker.broker.topics import TopicRegistry
from hpbroker.io import checkpoint
from hpbroker.io.epochs import NAME as EPOCHS_NAME
from hpbroker.io.epochs import EpochCache
from hpbroker.io.fs import FaultyFileSystem, FileSystem


def leftovers(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.endswith(".tmp"))


# -- the helper ------------------------------------------------------------------------


def test_write_atomic_replaces_the_file_and_leaves_no_tmp(tmp_path):
    p = tmp_path / "f"
    FileSystem().write_atomic(p, b"old")
    FileSystem().write_atomic(str(p), memoryview(b"new content"))
    assert p.read_bytes() == b"new content"
    assert leftovers(tmp_path) == []


def test_write_atomic_makes_every_step_through_the_file_system(tmp_path):
    fs = FaultyFileSystem()
    fs.write_atomic(tmp_path / "f", b"x" * 10)
    assert {op: fs.calls.get(op, 0) for op in ("open", "pwrite", "fsync", "rename", "fsync_dir")} == {
        "open": 1, "pwrite": 1, "fsync": 2, "rename": 1, "fsync_dir": 1}  # fsync: the file, then the directory


@pytest.mark.parametrize("op", ["open", "pwrite", "fsync", "rename"])
def test_a_step_before_the_rename_failing_keeps_the_old_file(tmp_path, op):
    p = tmp_path / "f"
    p.write_bytes(b"old")
    fs = FaultyFileSystem()
    fs.fail(op, errno.EIO)
    with pytest.raises(OSError) as e:
        fs.write_atomic(p, b"new")
    assert e.value.errno == errno.EIO
    assert p.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_failed_tmp_removal_still_raises_the_first_error(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"old")
    fs = FaultyFileSystem()
    fs.fail("fsync", errno.EIO)
    fs.fail("unlink", errno.EROFS)
    with pytest.raises(OSError) as e:
        fs.write_atomic(p, b"new")
    assert e.value.errno == errno.EIO
    assert p.read_bytes() == b"old"


def test_a_failed_directory_fsync_raises_after_the_rename(tmp_path):
    """The rename is done, so the new content is what a reader sees; the
    caller learns that it may not survive a crash."""
    p = tmp_path / "f"
    p.write_bytes(b"old")
    fs = FaultyFileSystem()
    fs.fail("fsync_dir", errno.EIO)
    with pytest.raises(OSError):
        fs.write_atomic(p, b"new")
    assert p.read_bytes() == b"new"
    assert leftovers(tmp_path) == []


# -- the four files: formats unchanged ----------------------------------------------------


def test_the_file_formats_are_unchanged(tmp_path):
    checkpoint.write(FileSystem(), str(tmp_path), 77)
    assert (tmp_path / "recovery-point").read_bytes() == checkpoint.encode(77)
    assert checkpoint.read(str(tmp_path)) == 77

    cache = EpochCache(str(tmp_path), 0)
    cache.assign(3, 0)
    cache.assign(1027, 10)
    assert (tmp_path / EPOCHS_NAME).read_bytes() == b"hpbroker-epochs 1\n3 0\n1027 10\n"
    cache.truncate_from(10)
    assert (tmp_path / EPOCHS_NAME).read_bytes() == b"hpbroker-epochs 1\n3 0\n"

    reg = TopicRegistry(tmp_path)
    reg.create("b", 2)
    reg.create("a", 4)
    assert (tmp_path / "topics.json").read_bytes() == b'{\n "a": 4,\n "b": 2\n}'

    broker_state.save_epoch(tmp_path, 1025, {1, 1025}, promoted_from="tcp://m:1")
    assert (tmp_path / "broker-state.json").read_bytes() == \
        b'{"epoch": 1025, "reigns": [1, 1025], "promoted_from": "tcp://m:1"}'
    assert leftovers(tmp_path) == []


# -- the four files: a failed write ------------------------------------------------------------

FAULTS = [("fsync", errno.EIO), ("rename", errno.EIO), ("pwrite", errno.ENOSPC)]


@pytest.mark.parametrize("op,err", FAULTS)
def test_a_failed_epoch_checkpoint_write_keeps_the_old_one_and_the_cache(tmp_path, op, err):
    d = str(tmp_path)
    fs = FaultyFileSystem()
    cache = EpochCache(d, 0, fs)
    cache.assign(3, 0)
    before = (tmp_path / EPOCHS_NAME).read_bytes()
    fs.fail(op, err)
    with pytest.raises(OSError) as e:
        cache.assign(1027, 50)
    assert e.value.errno == err
    assert cache.entries == [(3, 0)] and cache.latest_epoch == 3  # nothing held that is not on disk
    assert (tmp_path / EPOCHS_NAME).read_bytes() == before
    assert EpochCache(d, 1 << 62).entries == [(3, 0)]
    assert leftovers(tmp_path) == []
    # the same epoch is written again on the next try, once the disk works
    cache.assign(1027, 50)
    assert EpochCache(d, 1 << 62).entries == [(3, 0), (1027, 50)]


@pytest.mark.parametrize("op,err", FAULTS)
def test_a_failed_epoch_truncation_keeps_the_old_checkpoint(tmp_path, op, err):
    d = str(tmp_path)
    fs = FaultyFileSystem()
    cache = EpochCache(d, 0, fs)
    cache.assign(3, 0)
    cache.assign(1027, 50)
    fs.fail(op, err)
    with pytest.raises(OSError):
        cache.truncate_from(50)
    assert cache.entries == [(3, 0), (1027, 50)]
    assert EpochCache(d, 1 << 62).entries == [(3, 0), (1027, 50)]
    assert leftovers(tmp_path) == []
    cache.truncate_from(50)
    assert EpochCache(d, 1 << 62).entries == [(3, 0)]


@pytest.mark.parametrize("op,err", FAULTS)
def test_a_failed_topics_write_keeps_the_old_registry_and_registers_nothing(tmp_path, op, err):
    fs = FaultyFileSystem()
    reg = TopicRegistry(tmp_path, fs)
    reg.create("orders", 4)
    before = (tmp_path / "topics.json").read_bytes()
    fs.fail(op, err)
    with pytest.raises(OSError) as e:
        reg.create("payments", 2)
    assert e.value.errno == err
    assert reg.topics == {"orders": 4}  # the supervisor's view never names a topic that is not on disk
    assert (tmp_path / "topics.json").read_bytes() == before
    assert TopicRegistry(tmp_path).topics == {"orders": 4}
    assert leftovers(tmp_path) == []
    reg.create("payments", 2)
    assert TopicRegistry(tmp_path).topics == {"orders": 4, "payments": 2}


@pytest.mark.parametrize("op,err", FAULTS)
def test_a_failed_broker_state_write_keeps_the_old_state(tmp_path, op, err):
    broker_state.save_epoch(tmp_path, 2, {1, 2}, promoted_from="tcp://m:1")
    before = (tmp_path / "broker-state.json").read_bytes()
    fs = FaultyFileSystem()
    fs.fail(op, err)
    with pytest.raises(OSError) as e:
        broker_state.save_epoch(tmp_path, 1026, {1, 2, 1026}, promoted_from=None, fs=fs)
    assert e.value.errno == err
    assert (tmp_path / "broker-state.json").read_bytes() == before
    assert broker_state.load_epoch(tmp_path) == 2
    assert broker_state.load_reigns(tmp_path) == {1, 2}
    assert broker_state.load_promoted_from(tmp_path) == "tcp://m:1"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("op,err", FAULTS)
def test_a_failed_recovery_point_write_keeps_the_old_one(tmp_path, op, err):
    d = str(tmp_path)
    checkpoint.write(FileSystem(), d, 100)
    fs = FaultyFileSystem()
    fs.fail(op, err)
    with pytest.raises(OSError):
        checkpoint.write(fs, d, 200)
    assert checkpoint.read(d) == 100
    assert leftovers(tmp_path) == []

