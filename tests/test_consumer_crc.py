"""Consumers check every batch's CRC32C (issue 26, "A defect found while
corrupting a log by hand"): a bit flipped in a closed segment reaches no
application as data; it raises CorruptBatchError naming topic, partition
and offset, after every good message before it was handed out."""

from __future__ import annotations

import pytest

from brokerproc import BrokerProcess
from hpbroker import batch as B
from hpbroker.client import Consumer, CorruptBatchError, Producer
from hpbroker.client.integrity import check_reply
from hpbroker.io import layout
from hpbroker.io.testing import make_batch
from hpbroker.protocol.errors import ErrorCode

SEGMENT_CONFIG = """
[log]
segment_bytes = 65536
"""


def _flip(path, pos, bit=0x04):
    with open(path, "r+b") as f:
        f.seek(pos)
        c = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([c ^ bit]))


@pytest.fixture
def corrupted(tmp_path):
    """A broker whose topic t-0 holds 400 one-record batches `line-000000`...
    over several rolled segments; one bit of the value `line-000100` is
    flipped on disk while the broker is down ('l' -> 'h'), then it restarts."""
    cfg = tmp_path / "hpbroker.toml"
    cfg.write_text(SEGMENT_CONFIG)
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "1", "--config", str(cfg)))
    b.start()
    try:
        with Producer(b.url, acks=1, linger_ms=0) as p:
            for i in range(400):
                p.send_batch("t", [b"line-%06d" % i + b"." * 300], partition=0, keys=[b"k%06d" % i]).result(10)
        b.stop()
        d = str(tmp_path / "data" / "t-0")
        segs = layout.list_segments(d)
        assert len(segs) >= 3 and segs[1] > 100  # offset 100 lies in a closed, rolled segment
        path = layout.log_path(d, segs[0])
        data = open(path, "rb").read()
        pos = data.index(b"line-000100")
        _flip(path, pos)  # 'l' ^ 0x04 == 'h'
        b.start()
        yield b
    finally:
        b.stop()


def test_poll_raises_at_the_flipped_batch_after_the_good_ones(corrupted):
    c = Consumer(corrupted.url, "t", partitions=[0], auto_offset_reset="earliest", fetch_max_wait_ms=50)
    try:
        got = []
        with pytest.raises(CorruptBatchError) as ei:
            for _ in range(50):
                got += c.poll(timeout_ms=200)
        err = ei.value
        assert err.code == ErrorCode.CORRUPT_BATCH
        assert (err.topic, err.partition, err.offset) == ("t", 0, 100)
        assert "t/0 at offset 100" in str(err) and "CRC32C" in str(err)
        assert [m.offset for m in got] == list(range(100))  # every good message before it, and no other
        assert all(m.value.startswith(b"line-") for m in got)
        with pytest.raises(CorruptBatchError):  # it stays there until the application moves on
            c.poll(timeout_ms=500)
        c.seek(0, 101)
        rest = []
        for _ in range(50):
            rest += c.poll(timeout_ms=200)
            if rest and rest[-1].offset == 399:
                break
        assert [m.offset for m in rest] == list(range(101, 400))
    finally:
        c.close()


def test_poll_batches_raises_too_and_check_crcs_false_gets_the_flipped_bytes(corrupted):
    c = Consumer(corrupted.url, "t", partitions=[0], auto_offset_reset="earliest", fetch_max_wait_ms=50)
    try:
        n = 0
        with pytest.raises(CorruptBatchError) as ei:
            for _ in range(50):
                for rb in c.poll_batches(timeout_ms=200):
                    n += rb.record_count - (rb.start_offset - rb.base_offset)
        assert ei.value.offset == 100 and n == 100
    finally:
        c.close()
    c = Consumer(corrupted.url, "t", partitions=[0], auto_offset_reset="earliest", fetch_max_wait_ms=50,
                 check_crcs=False)
    try:
        got = []
        for _ in range(50):
            got += c.poll(timeout_ms=200)
            if got and got[-1].offset == 399:
                break
        assert got[100].value.startswith(b"hine-000100")  # what the issue saw, now only when asked for
    finally:
        c.close()


def _reply(*batches):
    return b"".join(batches)


def _stamped(n, base, tag=0):
    b = bytearray(make_batch(n, 50, tag=tag))
    B.stamp(b, base, 1)
    return bytes(b)


def test_check_reply_keeps_the_good_prefix_and_names_the_bad_batch():
    a, b, c = _stamped(2, 10), _stamped(3, 12, 1), _stamped(1, 15, 2)
    assert check_reply(_reply(a, b, c), 11) == (len(a) + len(b) + len(c), 16, None)
    bad = bytearray(b)
    bad[100] ^= 1
    end, nxt, problem = check_reply(_reply(a, bytes(bad), c), 10)
    assert (end, nxt) == (len(a), 12) and "offsets 12..14" in problem and "CRC32C" in problem
    assert check_reply(_reply(a, bytes(bad), c), 10, crcs=False)[2] is None


def test_check_reply_catches_base_offsets_the_crc_does_not_cover():
    a, b = _stamped(2, 10), _stamped(3, 12, 1)
    assert "not the one holding offset 9" in check_reply(_reply(a, b), 9)[2]
    moved = bytearray(b)
    B.stamp(moved, 13, 1)  # base_offset lies outside the CRC
    end, nxt, problem = check_reply(_reply(a, bytes(moved)), 10)
    assert (end, nxt) == (len(a), 12) and "claims base offset 13" in problem
    assert check_reply(_reply(a, bytes(moved)), 10, contiguous=False)[2] is None


def test_check_reply_refuses_headers_that_would_mislead_the_decoder():
    a = bytearray(_stamped(2, 10))
    a[B.MAGIC_AT] = 7
    assert "bad magic 7" in check_reply(bytes(a), 10, crcs=False)[2]
    a = bytearray(_stamped(2, 10))
    a[B.COUNT_AT] = 200  # 200 table entries do not fit the batch
    assert "do not fit" in check_reply(bytes(a), 10, crcs=False)[2]


def test_a_filtered_fetch_never_re_cuts_a_damaged_batch(corrupted):
    # the broker re-cuts a filtered batch with a fresh CRC: it must check the stored one first
    from hpbroker.protocol.filters import Filter

    c = Consumer(corrupted.url, "t", partitions=[0], auto_offset_reset="earliest", fetch_max_wait_ms=50,
                 filter=Filter.key_prefix(b"k0001"))
    try:
        got = []
        with pytest.raises(CorruptBatchError) as ei:
            for _ in range(50):
                got += c.poll(timeout_ms=200)
        assert ei.value.code == ErrorCode.CORRUPT_STORED_BATCH
        assert "offsets 100..100" in str(ei.value) and "CRC32C" in str(ei.value)
        assert got == []  # 100..199 would match; 100 is damaged and nothing before it matches
    finally:
        c.close()
    assert "fails its CRC32C check" in corrupted.log()  # and the acceptor says so


def test_select_stops_before_a_damaged_batch_and_raises_when_it_comes_first():
    from hpbroker.protocol.filters import Filter, select

    a, b, c = _stamped(2, 10), _stamped(3, 12, 1), _stamped(1, 15, 2)
    bad = bytearray(b)
    bad[100] ^= 1
    flt = Filter.header_exists("x", present=False)  # every record
    pieces, nbytes, nxt, stopped = select(_reply(a, bytes(bad), c), flt, 10, 1 << 20)
    assert (len(pieces), nbytes, nxt, stopped) == (1, len(a), 12, True)
    with pytest.raises(B.CorruptBatch, match="offsets 12..14"):
        select(_reply(bytes(bad), c), flt, 12, 1 << 20)
    assert len(select(_reply(a, bytes(bad), c), flt, 10, 1 << 20, verify=False)[0]) == 3
