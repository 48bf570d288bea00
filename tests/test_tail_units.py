"""hpbroker.tail without a broker: the config checks, the checkpoint store,
the follower on real files (rotation, truncation, copytruncate, restarts),
and the shipper's in-order acknowledgement, back-pressure and rewind,
driven with a fake send function and a fake clock."""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from pathlib import Path

import pytest

from hpbroker.io.fs import FaultyFileSystem
from hpbroker.tail import config as tc
from hpbroker.tail.checkpoint import CheckpointStore, CheckpointWriter, Entry, StateDirLocked
from hpbroker.tail.follower import COPY_WAIT, Follower
from hpbroker.tail.router import Router, path_partition
from hpbroker.tail.shipper import Shipper
from hpbroker.tail.status import BrokerState, Status

ROOT = Path(__file__).resolve().parent.parent


# -- config ----------------------------------------------------------------------------------

def test_every_config_key_is_documented_in_docs_tail_md():
    doc = (ROOT / "docs" / "tail.md").read_text()
    missing = [k for k in (*tc.AGENT_KEYS, *tc.SOURCE_KEYS) if f"`{k}`" not in doc]
    assert not missing, f"docs/tail.md does not document {missing}"


@pytest.mark.parametrize("doc, words", [
    ({}, "no source"),
    ({"source": [{"paths": ["x"]}]}, "source[0]: topic is required"),
    ({"source": [{"topic": "t"}]}, "source[0]: paths is required"),
    ({"source": {"topic": "t", "paths": ["x"]}}, "[[source]]"),
    ({"bogus": 1, "source": [{"topic": "t", "paths": ["x"]}]}, "unknown key 'bogus'"),
    ({"source": [{"topic": "t", "paths": ["x"], "colour": 1}]}, "source[0]: unknown key 'colour'"),
    ({"poll_interval_ms": 0, "source": [{"topic": "t", "paths": ["x"]}]}, "poll_interval_ms: 0 is out of range"),
    ({"acks": 2, "source": [{"topic": "t", "paths": ["x"]}]}, "acks: expected one of"),
    ({"source": [{"topic": "t", "paths": []}]}, "source[0].paths"),
    ({"source": [{"topic": "t", "paths": ["x"], "multiline_start": "("}]}, "source[0].multiline_start: bad regex"),
    ({"source": [{"topic": "t", "paths": ["x"], "multiline_start": ".*"}]}, "matches an empty line"),
    ({"source": [{"topic": "t", "paths": ["x"], "key_regex": "host=\\S+"}]}, "needs a group"),
    ({"source": [{"topic": "t", "paths": ["x"], "key": "a", "key_regex": "(a)"}]}, "not both"),
    ({"source": [{"topic": "t", "paths": ["x"], "encoding": "klingon"}]}, "unknown encoding"),
    ({"source": [{"topic": "t", "paths": ["x"], "encoding": "utf-16"}]}, "not ASCII-compatible"),
    ({"source": [{"topic": "t", "paths": ["x"], "partition": -1}]}, "out of range"),
    ({"source": [{"topic": "t", "paths": ["x"], "name": "a"}, {"topic": "u", "paths": ["y"], "name": "a"}]},
     "used by two sources"),
    ({"read_bytes": 4096, "max_record_bytes": 8192, "source": [{"topic": "t", "paths": ["x"]}]},
     "must be larger than max_record_bytes"),
])
def test_a_bad_config_is_one_line_naming_the_key(doc, words):
    with pytest.raises(tc.ConfigError) as e:
        tc.from_dict(doc)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_good_config_compiles_its_patterns():
    a = tc.from_dict({"poll_interval_ms": 100, "source": [
        {"topic": "t", "paths": "/x/*.log", "multiline_start": r"^\d", "key_regex": r"host=(?P<key>\S+)"},
        {"topic": "u", "paths": ["/y"], "encoding": "shift_jis", "multiline_start": r"\d"},
        {"topic": "v", "paths": ["/z"], "multiline_start": "Ä"}]})
    s, sj, uml = a.sources
    assert s.paths == ["/x/*.log"] and s.fast and s.start_rx.pattern == rb"^\d"
    assert not sj.fast and isinstance(sj.start_rx.pattern, str)  # shift_jis: ASCII bytes inside characters
    assert not uml.fast  # a non-ASCII pattern runs on decoded text
    assert [x.name for x in a.sources] == ["t#0", "u#1", "v#2"]


# -- checkpoint store --------------------------------------------------------------------------

def test_checkpoints_round_trip_and_the_state_dir_is_locked(tmp_path):
    store = CheckpointStore(str(tmp_path / "st"))
    store.lock()
    assert store.load() == []
    e = Entry(1, 2, 300, 16, 0xABC, "/x/a.log", "s")
    store.save([e])
    assert CheckpointStore(str(tmp_path / "st")).load() == [e]
    with pytest.raises(StateDirLocked):
        CheckpointStore(str(tmp_path / "st")).lock()
    store.unlock()
    CheckpointStore(str(tmp_path / "st")).lock()


def test_an_unreadable_checkpoint_stops_the_agent_instead_of_starting_over(tmp_path):
    (tmp_path / "checkpoints.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        CheckpointStore(str(tmp_path)).load()


def test_a_failed_checkpoint_write_keeps_the_old_file_and_is_reported_once(tmp_path):
    fs = FaultyFileSystem()
    store = CheckpointStore(str(tmp_path), fs=fs)
    old = Entry(1, 2, 100, 0, 0, "/a", "s")
    store.save([old])
    seen = []
    done = threading.Event()

    def on_error(e):
        seen.append(e)
        if e is None:
            done.set()

    fs.fail("fsync", errno.EIO, times=3)
    w = CheckpointWriter(store, 0.0, on_error=on_error)
    w.submit([Entry(1, 2, 200, 0, 0, "/a", "s")])
    assert done.wait(10), seen
    assert isinstance(seen[0], OSError) and seen[1:] == [None]  # one report for the streak, one when it heals
    assert store.load()[0].offset == 200
    assert w.close([Entry(1, 2, 250, 0, 0, "/a", "s")])
    assert store.load()[0].offset == 250
    assert not list(tmp_path.glob("*.tmp"))


# -- a rig: follower + shipper over real files, a fake send, a fake clock -----------------------

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeSend:
    """Collects sends; the test acknowledges or fails them in any order."""

    def __init__(self):
        self.calls = []  # [topic, partition, values, keys, on_done, state]

    def __call__(self, topic, partition, values, keys, on_done):
        self.calls.append([topic, partition, list(values), keys, on_done, None])

    def pending(self):
        return [c for c in self.calls if c[5] is None]

    def ack(self, i=None):
        for c in (self.pending() if i is None else [self.calls[i]]):
            c[5] = "ok"
            c[4](None)

    def fail(self, i, exc):
        self.calls[i][5] = "failed"
        self.calls[i][4](exc)

    def values(self, only_ok=False):
        return [v for c in self.calls if not only_ok or c[5] == "ok" for v in c[2]]


class Rig:
    def __init__(self, tmp_path, pattern="*.log", max_request_bytes=4 << 20, **agent_kw):
        src = {"topic": "t", "paths": [str(tmp_path / pattern)]}
        src.update(agent_kw.pop("source", {}))
        agent_kw.setdefault("read_bytes", 4096)
        agent_kw.setdefault("max_record_bytes", 1024)
        agent_kw.setdefault("max_inflight_bytes", 1 << 20)
        agent_kw.setdefault("close_inactive_ms", 1000)
        self.cfg = tc.from_dict({"source": [src], **agent_kw})
        self.clock = Clock()
        self.notes = []
        self.follower = Follower(self.cfg, self.clock, note=self.notes.append)
        self.send = FakeSend()
        self.ship = Shipper(self.cfg, self.follower, self.send, {"t": 4}, self.clock,
                            note=self.notes.append, max_request_bytes=max_request_bytes)

    def pump(self, rounds=3, ack=True, advance=0.3, final=False):
        for _ in range(rounds):
            self.clock.t += advance
            self.follower.scan()
            self.ship.step(final=final)
            if ack:
                self.send.ack()
            self.ship.collect()
            self.ship.checkpoint_written(self.ship.acked_bytes)  # as the agent's checkpoint writer reports

    def acked(self, name):
        return {Path(f.path).name: f.acked for f in self.follower.files.values()}.get(name)


def lines(prefix, a, b):
    return b"".join(b"%s %06d\n" % (prefix, i) for i in range(a, b))


def want(prefix, a, b):
    return [b"%s %06d" % (prefix, i) for i in range(a, b)]


def test_every_line_once_in_order_and_the_checkpoint_follows_the_acks(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(lines(b"a", 0, 1000))
    r = Rig(tmp_path)
    r.pump()
    assert r.send.values() == want(b"a", 0, 1000)
    assert r.acked("a.log") == log.stat().st_size
    with open(log, "ab") as f:
        f.write(lines(b"a", 1000, 1500) + b"a partial")
    r.pump()
    assert r.send.values() == want(b"a", 0, 1500)  # the unterminated line waits for its "\n"
    with open(log, "ab") as f:
        f.write(b" line\n")
    r.pump()
    assert r.send.values()[-1] == b"a partial line"


def test_a_chunk_acknowledged_in_one_partition_waits_for_its_share_in_another(tmp_path):
    """key_regex spreads a chunk over two partitions: the checkpoint moves
    past a chunk only when both of its shares are acknowledged, and past a
    later chunk only after the earlier one."""
    from hpbroker.partitioning import partition_for_key

    a, b = b"a", next(k for k in (b"b", b"c", b"d", b"e") if partition_for_key(k, 4) != partition_for_key(b"a", 4))
    data = b"".join(b"k=%s %05d\n" % ((a, b)[i % 2], i) for i in range(900))  # 9 000 bytes: 3 reads
    (tmp_path / "a.log").write_bytes(data)
    r = Rig(tmp_path, max_request_bytes=1, max_in_flight=1, source={"key_regex": r"k=(\w)"})  # one share per request
    r.pump(rounds=1, ack=False)
    f = next(iter(r.follower.files.values()))
    assert len(f.chunks) == 3 and len(r.send.calls) == 2  # one request in flight per partition
    lane_of = {c[3][0]: i for i, c in enumerate(r.send.calls)}
    r.send.ack(lane_of[b])  # chunk 1's "b" share
    r.ship.collect()
    assert f.acked == 0 and len(r.send.calls) == 3  # the "b" lane sends chunk 2's share
    r.send.ack(2)
    r.ship.collect()
    assert f.acked == 0  # chunk 2 is done in "b", but chunk 1 still waits for its "a" share
    r.send.ack(lane_of[a])
    r.ship.collect()
    assert f.acked == f.chunks[0].end - f.chunks[0].nbytes  # chunk 1 done; chunk 2 waits for its "a" share
    r.pump(rounds=6)
    assert f.acked == 9000 and sorted(r.send.values()) == sorted(data.split(b"\n")[:-1])


def test_requests_in_flight_per_partition_with_the_queue_merged_behind_them(tmp_path):
    (tmp_path / "a.log").write_bytes(lines(b"a", 0, 3000))  # 27 000 bytes: 7 reads
    r = Rig(tmp_path, max_in_flight=2)
    r.pump(rounds=1, ack=False)
    assert [len(c[2]) for c in r.send.calls] == [455, 455]  # the first reads went at once
    r.send.ack(0)
    r.ship.collect()
    assert len(r.send.calls) == 3 and len(r.send.calls[2][2]) == 3000 - 910  # the rest, read meanwhile, as one
    r.pump(rounds=2)
    assert r.send.values() == want(b"a", 0, 3000)


def test_after_a_failure_the_lane_sends_again_from_the_failed_request_later_successes_included(tmp_path):
    (tmp_path / "a.log").write_bytes(lines(b"a", 0, 1000))
    r = Rig(tmp_path, retry_backoff_ms=100, max_in_flight=2)
    r.pump(rounds=1, ack=False)
    assert len(r.send.calls) == 2
    r.send.ack(1)  # the later one is acknowledged first: nothing moves
    r.ship.collect()
    f = next(iter(r.follower.files.values()))
    assert f.acked == 0 and len(r.send.calls) == 2
    r.send.fail(0, RuntimeError("BUSY"))
    r.ship.collect()
    r.clock.t += 0.2
    r.ship.step()
    # one request again from the failed one on, the successful later one included: its lines come after
    assert r.send.calls[2][2][:910] == r.send.calls[0][2] + r.send.calls[1][2]
    r.pump(rounds=2, advance=0)
    assert f.acked == 9000


def test_reading_stops_at_the_in_flight_bound_and_goes_on_when_acks_come(tmp_path):
    (tmp_path / "a.log").write_bytes(lines(b"a", 0, 10_000))
    r = Rig(tmp_path, max_inflight_bytes=8192)
    r.pump(rounds=3, ack=False)
    assert 8192 <= r.ship.inflight_bytes <= 8192 + 4096 and r.ship.inflight_chunks == 3  # it reads while under the bound
    r.send.ack()
    r.ship.collect()
    r.send.ack()
    r.ship.collect()
    r.ship.step()
    assert r.ship.inflight_chunks == 0 and r.ship.unsaved_bytes() >= 8192  # acknowledged, not on disk: still counted
    r.ship.checkpoint_written(r.ship.acked_bytes)
    r.pump(rounds=40)
    assert r.send.values() == want(b"a", 0, 10_000)


def test_a_failed_request_is_sent_again_after_a_backoff_and_nothing_overtakes_it(tmp_path):
    (tmp_path / "a.log").write_bytes(lines(b"a", 0, 1000))
    r = Rig(tmp_path, retry_backoff_ms=500, max_in_flight=1)
    r.pump(rounds=1, ack=False)
    first = list(r.send.calls[0][2])
    r.send.fail(0, RuntimeError("connection lost"))
    r.ship.collect()
    assert r.ship.error is not None
    r.ship.step()
    assert len(r.send.calls) == 1  # the backoff has not passed, and nothing else of the partition goes
    r.clock.t += 0.6
    r.ship.step()
    assert r.send.calls[1][2][:len(first)] == first  # the same lines again first, then what was read since
    r.send.fail(1, RuntimeError("still down"))
    r.ship.collect()
    r.clock.t += 0.6
    r.ship.step()
    assert len(r.send.calls) == 2  # the second backoff is twice the first
    r.clock.t += 0.5
    r.pump(rounds=2, advance=0)
    assert r.send.values(only_ok=True) == want(b"a", 0, 1000) and r.ship.error is None
    f = next(iter(r.follower.files.values()))
    assert f.acked == 9000


def test_rename_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(lines(b"g0", 0, 100))
    r = Rig(tmp_path, pattern="app.log")
    r.pump()
    with open(log, "ab") as f:
        f.write(lines(b"g0", 100, 150))  # written before the rotation, not read yet
    os.rename(log, tmp_path / "app.log.1")
    with open(tmp_path / "app.log.1", "ab") as f:
        f.write(lines(b"g0", 150, 160))  # the application still had the old file open
    log.write_bytes(lines(b"g1", 0, 50))
    r.pump(rounds=2)
    assert r.send.values() == want(b"g0", 0, 160) + want(b"g1", 0, 50)
    assert any("renamed away" in n for n in r.notes)
    # the old file is closed once quiet for close_inactive_ms and acknowledged
    assert len(r.follower.files) == 2
    r.pump(rounds=5)
    assert len(r.follower.files) == 1
    # both went to the same partition: a file and the file that replaced it at its path
    assert {c[1] for c in r.send.calls} == {path_partition(str(log), 4)}


def test_a_rotated_name_under_the_glob_is_the_same_file_not_a_new_one(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(lines(b"g0", 0, 100))
    r = Rig(tmp_path, pattern="app.log*")
    r.pump()
    os.rename(log, tmp_path / "app.log.1")
    log.write_bytes(lines(b"g1", 0, 10))
    r.pump()
    assert r.send.values() == want(b"g0", 0, 100) + want(b"g1", 0, 10)


def test_truncation_restarts_at_zero(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(lines(b"g0", 0, 100))
    r = Rig(tmp_path)
    r.pump()
    log.write_bytes(lines(b"g1", 0, 10))  # shorter than the position: truncated and rewritten
    r.pump()
    assert r.send.values() == want(b"g0", 0, 100) + want(b"g1", 0, 10)
    # rewritten past the old position between two looks: the fingerprint notices
    log.write_bytes(lines(b"g2", 0, 200))
    r.pump()
    assert r.send.values()[-200:] == want(b"g2", 0, 200)
    assert sum("truncated" in n for n in r.notes) == 2


@pytest.mark.parametrize("copy_name, pattern", [("a.log.1", "a.log"), ("a.log.1", "a.log*"), ("a.log-20240101", "a.log")])
def test_copytruncate_ships_the_rest_from_the_copy_and_never_the_copy_twice(tmp_path, copy_name, pattern):
    log = tmp_path / "a.log"
    log.write_bytes(lines(b"g0", 0, 100))
    r = Rig(tmp_path, pattern=pattern)
    r.pump()
    with open(log, "ab") as f:
        f.write(lines(b"g0", 100, 130))  # not read before the copy is taken
    (tmp_path / copy_name).write_bytes(log.read_bytes())
    if pattern.endswith("*"):
        r.pump(rounds=1)  # the copy is seen before the truncation: it must wait, not be read from 0
        assert r.send.values() == want(b"g0", 0, 130) or r.send.values() == want(b"g0", 0, 100)
    with open(log, "r+b") as f:
        f.truncate(0)
    log.write_bytes(lines(b"g1", 0, 5))
    r.pump(rounds=3)
    got = r.send.values()
    assert got == want(b"g0", 0, 130) + want(b"g1", 0, 5), got[95:]  # the copy's rest before the new content
    assert len(got) == 135


def test_a_copy_of_a_file_that_is_never_truncated_is_a_file_of_its_own(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(lines(b"g0", 0, 100))
    r = Rig(tmp_path, pattern="a.log*")
    r.pump()
    (tmp_path / "a.log.bak").write_bytes(log.read_bytes())
    r.pump(rounds=2)
    assert len(r.send.values()) == 100  # waiting: maybe copytruncate
    r.clock.t += COPY_WAIT + 1
    r.pump(rounds=2)
    assert len(r.send.values()) == 200


def test_a_deleted_file_is_read_to_its_end(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(lines(b"a", 0, 10))
    r = Rig(tmp_path)
    r.pump()
    with open(log, "ab") as f:
        f.write(lines(b"a", 10, 20) + b"no newline at the end")
    log.unlink()
    r.pump(rounds=8)
    assert r.send.values() == want(b"a", 0, 20) + [b"no newline at the end"]  # final once quiet
    assert not r.follower.files and any("deleted" in n for n in r.notes)


def test_restart_resumes_at_the_checkpoint_and_a_reused_inode_starts_over(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(lines(b"a", 0, 100))
    r = Rig(tmp_path)
    r.pump()
    entries = r.follower.entries()
    with open(log, "ab") as f:
        f.write(lines(b"a", 100, 120))
    r2 = Rig(tmp_path)
    r2.follower.restore(entries)
    r2.pump()
    assert r2.send.values() == want(b"a", 100, 120)
    # same inode, other content (as a reused inode would be): from the start
    entries = [Entry(e.dev, e.ino, e.offset, e.fp_len, e.fp_crc ^ 1, e.path, e.source) for e in r2.follower.entries()]
    r3 = Rig(tmp_path)
    r3.follower.restore(entries)
    r3.pump()
    assert r3.send.values() == want(b"a", 0, 120)


def test_a_file_renamed_while_the_agent_was_down_is_found_by_its_inode(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(lines(b"g0", 0, 100))
    r = Rig(tmp_path, pattern="app.log")
    r.pump()
    entries = r.follower.entries()
    with open(log, "ab") as f:
        f.write(lines(b"g0", 100, 130))
    os.rename(log, tmp_path / "app.log.1")
    log.write_bytes(lines(b"g1", 0, 10))
    r2 = Rig(tmp_path, pattern="app.log")
    r2.follower.restore(entries)
    r2.pump(rounds=3)
    assert r2.send.values() == want(b"g0", 100, 130) + want(b"g1", 0, 10)


def test_start_at_end_skips_what_files_held_at_the_first_scan_only(tmp_path):
    (tmp_path / "a.log").write_bytes(lines(b"a", 0, 100) + b"half")
    r = Rig(tmp_path, start_at="end")
    r.pump()
    assert r.send.values() == []
    with open(tmp_path / "a.log", "ab") as f:
        f.write(b" line\n")
    (tmp_path / "b.log").write_bytes(lines(b"b", 0, 3))
    r.pump()
    assert r.send.values() == [b"half line"] + want(b"b", 0, 3)


def test_multiline_records_and_the_quiet_timeout(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"2024 first\n  at 1\n  at 2\n2024 second\n  at 3\n")
    r = Rig(tmp_path, source={"multiline_start": r"\d{4} ", "multiline_timeout_ms": 1000})
    r.pump(rounds=1, advance=0.1)
    assert r.send.values() == [b"2024 first\n  at 1\n  at 2"]
    r.pump(rounds=2, advance=0.6)  # quiet for longer than the timeout: the last record goes
    assert r.send.values()[1:] == [b"2024 second\n  at 3"]
    f = next(iter(r.follower.files.values()))
    assert f.acked == log.stat().st_size


def test_router_keys_and_partitions():
    def src(**kw):
        return tc.from_dict({"source": [{"topic": "t", "paths": ["x"], **kw}]}).sources[0]

    assert Router(src(), 4).route([b"a", b"b"], 3) == [(3, [b"a", b"b"], None)]
    assert Router(src(partition=1), 4).route([b"a"], 3) == [(1, [b"a"], None)]
    from hpbroker.partitioning import partition_for_key

    assert Router(src(key="k"), 4).route([b"a"], 3) == [(partition_for_key(b"k", 4), [b"a"], [b"k"])]
    groups = Router(src(key_regex=r"host=(\w+)"), 4).route([b"host=a x", b"nothing", b"host=b y", b"host=a z"], 3)
    by_key = {}
    for part, vals, keys in groups:
        for v, k in zip(vals, keys):
            by_key.setdefault(k, []).append((part, v))
    assert by_key[b"a"] == [(partition_for_key(b"a", 4), b"host=a x"), (partition_for_key(b"a", 4), b"host=a z")]
    assert by_key[None] == [(3, b"nothing")]
    named = Router(src(key_regex=r"(\d+) (?P<key>\w+)", partition=2), 4).route([b"12 abc"], 0)
    assert named == [(2, [b"12 abc"], [b"abc"])]


def test_status_line_and_broker_state_changes_once():
    clock = Clock()
    s = Status(5.0, clock)

    class Ship:
        acked_lines, acked_bytes, inflight_bytes = 0, 0, 0

        class follower:
            files = {}

    clock.t += 2.0
    Ship.acked_lines, Ship.acked_bytes = 2_000_000, 200_000_000
    line = s.line(Ship)
    assert "1,000,000 lines/s" in line and "100.0 MB/s" in line and "\n" not in line
    b = BrokerState(5.0, 0.5, 32 << 20)
    # a stall: the request sent at 100 is not acknowledged; acknowledged at 121
    msgs = [b.update(t, 100.0 if t < 121 else None, 90.0 if t < 121 else 121.0, None, 1 << 20)
            for t in (101, 104, 106, 107, 110, 121, 122)]
    assert [m is not None for m in msgs] == [False, False, True, False, False, True, False]
    assert "not acknowledged" in msgs[2] and "again" in msgs[5]
    # failures: one line when they start, none per retry, one when a request succeeds
    err = RuntimeError("lost the connection")
    msgs = [b.update(t, t, 121.0 if t < 140 else 140.0, err if t < 140 else None, 1 << 20) for t in (130, 131, 135, 140)]
    assert [m is not None for m in msgs] == [True, False, False, True] and "lost the connection" in msgs[0]


def test_checkpoint_file_is_json_with_the_documented_fields(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save([Entry(1, 2, 3, 4, 5, "/p", "s")])
    doc = json.loads((tmp_path / "checkpoints.json").read_text())
    assert doc["version"] == 1 and set(doc["files"][0]) == {"dev", "ino", "offset", "fp_len", "fp_crc", "path", "source"}
    assert re.search(r"`fp_crc`", (ROOT / "docs" / "tail.md").read_text())


def test_keys_and_files_that_differ_in_one_character_spread_over_the_partitions():
    """A CRC alone is linear: "0".."15" fell on 2 of 4 partitions and app0.log..app5.log on one.
    The mixed rule (hpbroker/partitioning.py) spreads them, for keys and for tail's file paths."""
    from hpbroker.partitioning import partition_for_key
    from hpbroker.tail.router import path_partition

    assert {partition_for_key(b"%d" % i, 4) for i in range(16)} == {0, 1, 2, 3}
    assert {partition_for_key(b"user-%d" % i, 8) for i in range(64)} == set(range(8))
    assert len({path_partition(f"/var/log/app{i}.log", 4) for i in range(6)}) >= 3
    counts = [0] * 16
    for i in range(16_000):
        counts[partition_for_key(b"order-%d" % i, 16)] += 1
    assert max(counts) < 1.2 * 1000 and min(counts) > 0.8 * 1000  # within 20 % of even
