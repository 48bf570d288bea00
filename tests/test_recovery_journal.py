"""The consumer's local recovery journal (hpbroker/client/recovery_journal.py):
durability across reopen and SIGKILL, torn tails cut, damage in the middle
refused, compaction, and the one-process lock."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpbroker.client import recovery_journal as rj
from hpbroker.client.recovery_journal import (Entry, JournalCorrupt, JournalLocked, RecoveryJournal,
                                              journal_filename)

ROOT = Path(__file__).resolve().parent.parent
NAME = "orders@billing"


def entry(i: int, size: int = 20, **kw) -> Entry:
    fields = dict(topic="orders", partition=i % 4, offset=1000 + i, key=None if i % 2 else b"key-%d" % i,
                  value=bytes([i % 251]) * size, headers=[("trace", b"%d" % i)] if i % 3 else [],
                  timestamp=1_700_000_000_000 + i, error=f"ValueError: bad record {i}", attempts=1,
                  failed_at=1_700_000_000.25 + i)
    fields.update(kw)
    return Entry(**fields)


def frames_of(path: Path) -> list[tuple[int, int]]:
    """(offset, total size) of each frame of a journal file."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        out.append((pos, rj.FRAME_HEADER + length))
        pos += rj.FRAME_HEADER + length
    assert pos == len(data)
    return out


def test_round_trip_across_reopen(tmp_path):
    with RecoveryJournal(tmp_path, NAME) as j:
        ids = [j.add(entry(i, size=10 * i)) for i in range(6)]
        assert ids == [1, 2, 3, 4, 5, 6]
        updated = j.retry_failed(3, "TimeoutError: still failing")
        assert (updated.attempts, updated.error) == (2, "TimeoutError: still failing")
        before = j.pending()
    assert [rid for rid, _ in before] == ids
    assert before[2][1] == updated and before[0][1] == entry(0, size=0)
    with RecoveryJournal(tmp_path, NAME) as j:
        assert j.pending() == before
        assert j.add(entry(9)) == 7  # ids continue
    with RecoveryJournal(tmp_path, NAME) as j:
        assert [rid for rid, _ in j.pending()] == ids + [7]
        assert j.pending()[0][1].headers == [] and j.pending()[1][1].headers == [("trace", b"1")]


def test_done_entries_are_gone_after_reopen_and_ids_are_not_reused(tmp_path):
    with RecoveryJournal(tmp_path, NAME) as j:
        for i in range(5):
            j.add(entry(i))
        j.done(2)
        j.done(4)
        with pytest.raises(KeyError, match="no pending entry 2"):
            j.done(2)
        assert [rid for rid, _ in j.pending()] == [1, 3, 5]
    with RecoveryJournal(tmp_path, NAME) as j:
        assert [rid for rid, _ in j.pending()] == [1, 3, 5]
        for rid in (1, 3, 5):
            j.done(rid)
        assert j.pending() == []
        # every entry done: the file was compacted to its start frame
        assert len(frames_of(j.path)) == 1
    with RecoveryJournal(tmp_path, NAME) as j:
        assert j.pending() == [] and j.add(entry(7)) == 6


def test_a_torn_tail_is_truncated(tmp_path):
    with RecoveryJournal(tmp_path, NAME) as j:
        for i in range(3):
            j.add(entry(i, size=100))
        good = j.pending()
        path, size = j.path, j.size
    half = rj.frame(rj._Add(4, entry(3, size=300)))
    with open(path, "ab") as f:
        f.write(half[: len(half) // 2])  # a write cut short by a crash
    with RecoveryJournal(tmp_path, NAME) as j:
        assert j.pending() == good
        assert j.truncated_bytes == len(half) // 2 and path.stat().st_size == size
        assert j.add(entry(5)) == 4
    with RecoveryJournal(tmp_path, NAME) as j:
        assert [rid for rid, _ in j.pending()] == [1, 2, 3, 4]


@pytest.mark.parametrize("tail", [
    b"\x07\x00\x00",                                # shorter than a frame header
    bytes(4096),                                    # zeros: the file grew, the data never landed
    b"\x10\x00\x00\x00\xde\xad\xbe\xef" + b"x" * 16,  # a whole frame whose CRC does not match
    b"\xff\xff\xff\x7f\x00\x00\x00\x00abc",         # a length out of range
])
def test_a_corrupt_tail_is_truncated(tmp_path, tail):
    with RecoveryJournal(tmp_path, NAME) as j:
        j.add(entry(0))
        j.add(entry(1))
        path, size, good = j.path, j.size, j.pending()
    with open(path, "ab") as f:
        f.write(tail)
    with RecoveryJournal(tmp_path, NAME) as j:
        assert j.pending() == good and path.stat().st_size == size and j.truncated_bytes == len(tail)


@pytest.mark.parametrize("where", ["payload", "length", "crc"])
def test_corruption_in_the_middle_raises_and_drops_nothing(tmp_path, where):
    with RecoveryJournal(tmp_path, NAME) as j:
        for i in range(4):
            j.add(entry(i, size=50))
        path = j.path
    (off, size), = [frames_of(path)[1]]
    data = bytearray(path.read_bytes())
    at = {"payload": off + size - 10, "length": off + 1, "crc": off + 5}[where]
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    for _ in range(2):  # the failed open released its lock: the second one sees the same damage
        with pytest.raises(JournalCorrupt) as ei:
            RecoveryJournal(tmp_path, NAME)
        msg = str(ei.value)
        assert str(path) in msg and f"offset {off}" in msg and "valid frame follows" in msg
    assert path.read_bytes() == bytes(data)


def test_a_good_crc_with_an_undecodable_record_raises(tmp_path):
    with RecoveryJournal(tmp_path, NAME) as j:
        j.add(entry(0))
        path = j.path
    payload = b"\x81\xa1t\xa4what"  # {"t": "what"}: a tag this version does not know
    head = len(payload).to_bytes(4, "little")
    from crc32c import crc32c
    with open(path, "ab") as f:
        f.write(head + crc32c(payload, crc32c(head)).to_bytes(4, "little") + payload)
    with pytest.raises(JournalCorrupt, match="good CRC"):
        RecoveryJournal(tmp_path, NAME)


_CHILD = textwrap.dedent("""
    import os, sys
    from hpbroker.client.recovery_journal import Entry, RecoveryJournal
    j = RecoveryJournal(sys.argv[1], "kill@test", compact_bytes=1 << 20)
    k = int(sys.argv[2])
    while True:
        size = (k * 7919) % (192 << 10)
        e = Entry(topic="t", partition=k % 4, offset=k, key=b"%d" % k, value=bytes([k % 251]) * size,
                  headers=[("k", b"%d" % k)], timestamp=k, error="e%d" % k)
        rid = j.add(e)
        os.write(1, b"A %d %d\\n" % (rid, k))
        if k % 3 != 2:
            j.done(rid)
            os.write(1, b"D %d\\n" % rid)
        k += 1
""")


def test_entries_whose_add_returned_survive_sigkill(tmp_path):
    """A child adds (and marks two in three done) in a loop and prints each
    id after the call returns; it is killed with SIGKILL at a random moment,
    again and again.  After each kill every entry whose add returned and
    whose done was not reported is in the journal, unchanged; none whose
    done returned is."""
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    added: dict[int, int] = {}  # id -> k
    done: set[int] = set()
    k = 0
    for _round in range(6):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(k)], stdout=subprocess.PIPE, env=env)
        try:
            lines = 0
            want = rng.randint(5, 40)
            deadline = time.monotonic() + 60
            while lines < want and time.monotonic() < deadline:
                line = child.stdout.readline()
                if not line:
                    break
                lines += 1
                k = _record(line, added, done, k)
            time.sleep(rng.random() * 0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        for line in child.stdout.read().splitlines(keepends=True):
            k = _record(line, added, done, k)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL, "the child died before it was killed"
        assert lines >= want, f"the child printed {lines} lines, expected at least {want}"
        with RecoveryJournal(tmp_path, "kill@test") as j:
            pending = dict(j.pending())
        for rid, kk in added.items():
            if rid in done:
                assert rid not in pending, f"entry {rid} was done, but is back after SIGKILL"
            elif kk % 3 == 2:
                e = pending.get(rid)
                assert e is not None, f"entry {rid} (k={kk}) was acknowledged but is missing after SIGKILL"
                assert (e.offset, e.key, e.headers, e.value) == (kk, b"%d" % kk, [("k", b"%d" % kk)],
                                                                  bytes([kk % 251]) * ((kk * 7919) % (192 << 10)))
    assert len(added) > 30


def _record(line: bytes, added: dict, done: set, k: int) -> int:
    if not line.endswith(b"\n"):
        return k
    parts = line.split()
    if parts[0] == b"A":
        rid, kk = int(parts[1]), int(parts[2])
        assert rid not in added, f"id {rid} given twice"
        added[rid] = kk
        return max(k, kk + 1)
    done.add(int(parts[1]))
    return k


def test_compaction_keeps_the_live_entries(tmp_path):
    with RecoveryJournal(tmp_path, NAME, compact_bytes=8 << 10) as j:
        for i in range(40):
            j.add(entry(i, size=500))
        j.retry_failed(8, "again")  # entry(7)
        j.retry_failed(8, "and again")
        biggest = j.size
        for rid in range(1, 41):
            if rid % 8:  # keep 5 of 40
                j.done(rid)
        assert j.size < biggest / 4  # compacted on the way
        live = j.pending()
        assert [rid for rid, _ in live] == [8, 16, 24, 32, 40]
        assert j.get(8) == entry(7, size=500, attempts=3, error="and again", failed_at=j.get(8).failed_at)
        assert j.get(16) == entry(15, size=500)
        assert not Path(f"{j.path}.tmp").exists()
    with RecoveryJournal(tmp_path, NAME) as j:
        assert j.pending() == live
        assert j.add(entry(99)) == 41
        j.compact()
        assert [rid for rid, _ in j.pending()] == [8, 16, 24, 32, 40, 41]
        assert len(frames_of(j.path)) == 1 + 6  # the start frame and the live entries


def test_a_leftover_tmp_from_an_interrupted_compaction_is_ignored(tmp_path):
    with RecoveryJournal(tmp_path, NAME) as j:
        j.add(entry(0))
        path, good = j.path, j.pending()
    Path(f"{path}.tmp").write_bytes(b"half a compaction")
    with RecoveryJournal(tmp_path, NAME) as j:
        assert j.pending() == good and not Path(f"{path}.tmp").exists()


def test_the_lock_refuses_a_second_opener(tmp_path):
    j = RecoveryJournal(tmp_path, NAME)
    try:
        j.add(entry(0))
        with pytest.raises(JournalLocked, match="already open in this process"):
            RecoveryJournal(tmp_path, NAME)
        code = ("import sys\nfrom hpbroker.client.recovery_journal import RecoveryJournal, JournalLocked\n"
                "try:\n    RecoveryJournal(sys.argv[1], sys.argv[2])\nexcept JournalLocked as e:\n"
                "    print(e); sys.exit(3)\n")
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path), NAME], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert r.returncode == 3, r.stderr
        assert f"in use by another process (pid {os.getpid()})" in r.stdout and str(j.path) in r.stdout
        assert [rid for rid, _ in j.pending()] == [1]  # the refused openers changed nothing
        j.add(entry(1))
    finally:
        j.close()
    with RecoveryJournal(tmp_path, NAME) as j2:  # closed: free again
        assert len(j2) == 2


def test_a_badly_typed_entry_is_refused_and_not_written(tmp_path):
    with RecoveryJournal(tmp_path, NAME) as j:
        with pytest.raises(TypeError, match="key"):
            j.add(entry(0, key="not bytes"))
        with pytest.raises(TypeError):
            j.add({"topic": "t"})
        assert j.size == 0 and j.pending() == []


def test_names_become_safe_distinct_file_names(tmp_path, monkeypatch):
    assert journal_filename("orders@billing") == "orders@billing"
    odd = ["a/b@g", "a b@g", "a_b@g", "../x@g", ".hidden@g"]
    files = [journal_filename(n) for n in odd]
    assert len(set(files)) == len(files) and all("/" not in f and not f.startswith(".") for f in files)
    monkeypatch.setenv("HOME", str(tmp_path))
    with RecoveryJournal(None, "a/b@g") as j:
        assert j.path.parent == tmp_path / ".hpbroker" / "recover"
        assert j.path.name == journal_filename("a/b@g") + ".journal"
        assert (j.path.parent.stat().st_mode & 0o777) == 0o700


def test_a_failed_compaction_leaves_the_journal_whole_and_usable(tmp_path, monkeypatch, caplog):
    j = RecoveryJournal(tmp_path, NAME)
    try:
        j.add(entry(0))
        j.add(entry(1))

        def no_rename(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(rj.os, "rename", no_rename)
        j.done(1)
        j.done(2)  # all done: compaction is due, and fails
        assert "compaction failed" in caplog.text
        assert not Path(f"{j.path}.tmp").exists()
        with pytest.raises(OSError):
            j.compact()
        assert j.add(entry(2)) == 3  # still writes to the one file
        monkeypatch.undo()
    finally:
        j.close()
    with RecoveryJournal(tmp_path, NAME) as j:
        assert [rid for rid, _ in j.pending()] == [3]
