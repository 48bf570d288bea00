"""The producer's spill journal (hpbroker/client/spill.py) on its own: records
and acknowledgements across reopen, torn tails cut, damage in the middle
refused with file and offset, segments deleted in order, the put-back (F)
records, a failed write cut back, the one-producer lock, and a SIGKILL in a
write loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpbroker.client import framing
from hpbroker.client import spill as sp
from hpbroker.client.framing import JournalCorrupt, JournalError, JournalLocked
from hpbroker.client.spill import SpillJournal

ROOT = Path(__file__).resolve().parent.parent


def rec(i: int, size: int = 20, *, front: bool = False, topic: str = "orders", partition: int | None = None):
    """(front, topic, partition, key, value, headers, timestamp) of message i."""
    return (front, topic, i % 4 if partition is None else partition, None if i % 3 == 0 else b"key-%d" % i,
            bytes([i % 251]) * size + b"#%d" % i, b"\x91\x92\xa1h\xc4\x01%c" % (i % 256) if i % 5 == 0 else None,
            1_700_000_000_000 + i)


def as_tuple(r: sp.SpillRecord):
    return (r.front, r.topic, r.partition, r.key, r.value, r.headers, r.timestamp)


def read_all(j: SpillJournal) -> list[sp.SpillRecord]:
    pos = j.start()
    out = []
    while True:
        more = j.read(pos, 1 << 16)
        if not more:
            return out
        out += more


def segment_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.spill"))


def frames_of(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        out.append((pos, framing.FRAME_HEADER + length))
        pos += framing.FRAME_HEADER + length
    assert pos == len(data)
    return out


def test_records_round_trip_across_reopen(tmp_path):
    recs = [rec(i, size=i) for i in range(50)] + [rec(50, topic="ünïcode/topic", partition=-1)]
    with SpillJournal(tmp_path) as j:
        assert j.write(recs[:30]) == 30 and j.write(recs[30:]) == 21
        assert j.next_seq == 51
        got = read_all(j)
    assert [r.seq for r in got] == list(range(51))
    assert [as_tuple(r) for r in got] == recs
    with SpillJournal(tmp_path) as j:
        assert j.recovered == 51 and j.next_seq == 51
        assert j.pending[("orders", 1)] == sum(1 for r in recs if r[1] == "orders" and r[2] == 1)
        assert j.pending[("ünïcode/topic", -1)] == 1
        assert [as_tuple(r) for r in read_all(j)] == recs
        j.write([rec(99)])
        assert read_all(j)[-1].seq == 51  # seqs go on


def test_acknowledged_records_are_not_read_again_after_reopen(tmp_path):
    with SpillJournal(tmp_path) as j:
        j.write([rec(i) for i in range(20)])
        j.write([], acks=[0, 1, 2, 5, 19])
        j.write([rec(20)], acks=[7])
        assert [r.seq for r in read_all(j)] == [3, 4, 6] + list(range(8, 19)) + [20]
    with SpillJournal(tmp_path) as j:
        assert j.recovered == 15
        assert sum(j.pending.values()) == 15
        assert [r.seq for r in read_all(j)] == [3, 4, 6] + list(range(8, 19)) + [20]


def test_a_torn_tail_is_cut_and_the_seqs_stay_right(tmp_path):
    with SpillJournal(tmp_path) as j:
        j.write([rec(i) for i in range(5)])
        path, size = segment_files(tmp_path)[-1], j.disk_bytes
    whole = framing.frame(b"R" + bytes(60))  # the start of a write a crash cut short
    with open(path, "ab") as f:
        f.write(whole[:30])
    with SpillJournal(tmp_path) as j:
        assert j.truncated_bytes == 30 and path.stat().st_size == size
        assert [r.seq for r in read_all(j)] == [0, 1, 2, 3, 4]
        j.write([rec(5)])
    with SpillJournal(tmp_path) as j:
        assert [as_tuple(r) for r in read_all(j)] == [rec(i) for i in range(6)]


@pytest.mark.parametrize("tail", [
    b"\x07\x00\x00",                                  # shorter than a frame header
    bytes(4096),                                      # zeros: the file grew, the data never landed
    b"\x10\x00\x00\x00\xde\xad\xbe\xef" + b"x" * 16,  # a whole frame whose CRC does not match
])
def test_a_corrupt_tail_is_cut(tmp_path, tail):
    with SpillJournal(tmp_path) as j:
        j.write([rec(0), rec(1)])
        path, size = segment_files(tmp_path)[-1], j.disk_bytes
    with open(path, "ab") as f:
        f.write(tail)
    with SpillJournal(tmp_path) as j:
        assert j.truncated_bytes == len(tail) and path.stat().st_size == size
        assert len(read_all(j)) == 2


@pytest.mark.parametrize("where", ["payload", "length", "crc"])
def test_corruption_in_the_middle_raises_naming_file_and_offset(tmp_path, where):
    with SpillJournal(tmp_path) as j:
        j.write([rec(i, size=40) for i in range(6)])
    path = segment_files(tmp_path)[-1]
    off, size = frames_of(path)[2]
    data = bytearray(path.read_bytes())
    data[{"payload": off + size - 5, "length": off + 1, "crc": off + 5}[where]] ^= 0x40
    path.write_bytes(bytes(data))
    for _ in range(2):  # the failed open released its lock: the second one sees the same damage
        with pytest.raises(JournalCorrupt) as ei:
            SpillJournal(tmp_path)
        msg = str(ei.value)
        assert str(path) in msg and f"offset {off}" in msg and "damage in the middle" in msg
    assert path.read_bytes() == bytes(data)  # nothing was cut


def test_a_bad_frame_at_the_end_of_an_earlier_segment_is_not_a_torn_tail(tmp_path):
    with SpillJournal(tmp_path, segment_bytes=4096) as j:
        j.write([rec(i, size=3000) for i in range(2)])  # over 4096: rolls
        j.write([rec(2)])
        first, last = segment_files(tmp_path)[0], segment_files(tmp_path)[-1]
    assert first != last
    data = bytearray(first.read_bytes())
    data[-3] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as ei:
        SpillJournal(tmp_path)
    assert str(first) in str(ei.value) and "not the last" in str(ei.value)


def test_a_missing_segment_between_two_others_is_refused(tmp_path):
    with SpillJournal(tmp_path, segment_bytes=4096) as j:
        for i in range(4):
            j.write([rec(i, size=5000)])
    files = segment_files(tmp_path)
    assert len(files) >= 3
    files[1].unlink()
    with pytest.raises(JournalCorrupt, match="a segment is missing"):
        SpillJournal(tmp_path)


def test_a_good_crc_over_an_unknown_kind_or_a_bad_record_raises(tmp_path):
    with SpillJournal(tmp_path) as j:
        j.write([rec(0)])
    path = segment_files(tmp_path)[-1]
    with open(path, "ab") as f:
        f.write(framing.frame(b"Z" + bytes(10)))
    with pytest.raises(JournalCorrupt, match="unknown kind 0x5a"):
        SpillJournal(tmp_path)
    path.write_bytes(framing.frame(b"R" + bytes(10)))  # shorter than a record header
    with pytest.raises(JournalCorrupt, match="good CRC but its record does not parse"):
        SpillJournal(tmp_path)


def test_segments_are_deleted_in_order_once_acknowledged(tmp_path):
    with SpillJournal(tmp_path, segment_bytes=4096) as j:
        for i in range(12):
            j.write([rec(i, size=1500) for i in range(3 * i, 3 * i + 3)])  # over 4096: each write rolls
        segs = segment_files(tmp_path)
        assert len(segs) == 13 and segs[-1].stat().st_size == 0
        j.write([], acks=list(range(3, 12)))  # segments 2-4 done, but segment 1 is not: they all stay
        assert segment_files(tmp_path) == segs
        j.write([], acks=[0, 1, 2])  # now 1-4 go, oldest first
        assert segment_files(tmp_path) == segs[4:]
        j.write([], acks=list(range(12, 36)))  # all done: the last one rolls over and goes too
        left = segment_files(tmp_path)
        assert len(left) == 1 and left[0].name == f"{36:020d}.spill"
        assert read_all(j) == []
    with SpillJournal(tmp_path) as j:
        assert j.recovered == 0 and j.next_seq == 36 and j.pending == {}
        j.write([rec(36)])
        assert [r.seq for r in read_all(j)] == [36]


def test_put_back_records_come_back_in_front_not_in_the_reads(tmp_path):
    with SpillJournal(tmp_path) as j:
        j.write([rec(i, partition=0) for i in range(3)])
        j.write([rec(i, front=True, partition=0) for i in range(3, 6)])  # a close put these back
    with SpillJournal(tmp_path) as j:
        assert [r.seq for r in j.front] == [3, 4, 5] and all(r.front for r in j.front)
        assert [r.seq for r in read_all(j)] == [0, 1, 2]
        assert j.pending == {("orders", 0): 6}
        j.write([], acks=[3, 4])
        assert [r.seq for r in j.front] == [5]
    with SpillJournal(tmp_path) as j:
        assert [r.seq for r in j.front] == [5] and j.recovered == 4


def test_a_failed_write_is_cut_back_and_nothing_of_it_counts(tmp_path, monkeypatch):
    with SpillJournal(tmp_path) as j:
        j.write([rec(0)])
        size = j.disk_bytes
        real = os.fdatasync

        def broken(fd):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(sp.os, "fdatasync", broken)
        with pytest.raises(OSError):
            j.write([rec(1), rec(2)])
        assert j.disk_bytes == size and j.next_seq == 1
        assert segment_files(tmp_path)[-1].stat().st_size == size
        monkeypatch.setattr(sp.os, "fdatasync", real)
        j.write([rec(1), rec(2)])  # the caller still held the group: it goes again, same seqs
        assert [as_tuple(r) for r in read_all(j)] == [rec(0), rec(1), rec(2)]


def test_a_journal_that_could_not_cut_back_refuses_writes(tmp_path, monkeypatch):
    with SpillJournal(tmp_path) as j:
        monkeypatch.setattr(sp.os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(5, "EIO")))
        monkeypatch.setattr(sp.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(5, "EIO")))
        with pytest.raises(OSError):
            j.write([rec(0)])
        monkeypatch.undo()
        with pytest.raises(JournalError, match="reopen it"):
            j.write([rec(1)])


def test_one_producer_per_directory(tmp_path):
    with SpillJournal(tmp_path):
        with pytest.raises(JournalLocked, match="already open in this process"):
            SpillJournal(tmp_path)
        code = ("import sys\nfrom hpbroker.client.spill import SpillJournal\n"
                "from hpbroker.client.framing import JournalLocked\n"
                "try:\n    SpillJournal(sys.argv[1])\nexcept JournalLocked as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                             cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
        assert f"in use by another process (pid {os.getpid()})" in out.stdout
    with SpillJournal(tmp_path):  # closed: free again
        pass


def test_a_frame_larger_than_the_read_chunk(tmp_path):
    big = (False, "t", 0, b"k", os.urandom(3 << 20), None, 1)
    with SpillJournal(tmp_path) as j:
        j.write([rec(0), big, rec(2)])
        got = [as_tuple(r) for r in read_all(j)]
    assert got == [rec(0), big, rec(2)]


_CHILD = textwrap.dedent("""
    import sys
    from hpbroker.client.spill import SpillJournal
    j = SpillJournal(sys.argv[1], segment_bytes=1 << 16)
    i = 0
    while True:
        j.write([(False, "t", i % 3, None, b"v%d" % k, None, k) for k in range(i, i + 7)],
                acks=list(range(i - 42, i - 35)) if i >= 42 else None)
        i += 7
        print(i, flush=True)
""")


def test_sigkill_in_a_write_loop_loses_no_written_group(tmp_path):
    """Every group whose write() returned (the child printed its count) is
    there after a SIGKILL, in order, nothing acknowledged comes back, and
    opening cuts whatever torn tail the kill left."""
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / f"d{round_}")], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        written = 0
        for line in p.stdout:
            written = int(line)
            if written >= 2000 + 700 * round_:
                break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        with SpillJournal(tmp_path / f"d{round_}", segment_bytes=1 << 16) as j:
            assert j.next_seq >= written
            got = read_all(j)
            seqs = [r.seq for r in got]
            # acknowledged up to some point (every group acknowledged the one 6 groups older), the rest all there
            assert seqs == list(range(seqs[0], j.next_seq)) and j.next_seq - 49 <= seqs[0] <= j.next_seq - 35
            assert all(r.value == b"v%d" % r.seq and r.partition == (r.seq - r.seq % 7) % 3 for r in got)
