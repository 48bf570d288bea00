"""Filtered fetches in the acceptor's FetchService, without sockets, over real
segment files: what a reply holds, where the next fetch starts, the scan
limit, and how min_bytes / max_wait_ms behave with a filter
(docs/protocol.md, "Filters")."""

from __future__ import annotations

import time

import msgspec
import pytest

from hpbroker import Filter, batch
from hpbroker.config import LogConfig
from hpbroker.io import PartitionLog
from hpbroker.io.layout import partition_dir
from hpbroker.net import fetch as fetch_mod
from hpbroker.net.fetch import FetchService
from hpbroker.protocol import filters
from hpbroker.protocol import messages as m

K = "t/0"
RARE = Filter.header_eq("tag", "rare")


class Log:
    """Partition t/0 in ``tmp_path``, and a FetchService reading it."""

    def __init__(self, tmp_path, scan: int = 4 << 20):
        self.log = PartitionLog(partition_dir(str(tmp_path), "t", 0), LogConfig(segment_bytes=1 << 20))
        self.svc = FetchService(tmp_path, 1 << 20, scan)
        self.rare: list[int] = []

    def append(self, tags: list[str]) -> None:
        b = batch.encode_batch([b"value-%d" % i for i in range(len(tags))],
                               headers=[batch.encode_headers([("tag", t.encode())]) for t in tags])
        base = self.log.append(b, 1)
        self.rare += [base + i for i, t in enumerate(tags) if t == "rare"]
        self.log.flush()
        self.log.flush_result(wait=True)

    def publish(self) -> list[str]:
        return self.svc.update({K: self.log.high_watermark}, {K: 0})

    def fetch(self, offset: int, flt=RARE, **kw) -> m.Fetch:
        return m.Fetch(id=offset, topic="t", partition=0, offset=offset,
                       filter=msgspec.UNSET if flt is None else msgspec.Raw(flt.encode()), **kw)

    def answer_now(self, req):
        assert not self.svc.start(b"c", req, time.monotonic(), flt=self.svc.filter_of(req))
        return self.svc.answer(req)


def offsets(data) -> list[int]:
    out = []
    for pos, h in batch.iter_batches(data):
        batch.check_batch(data, pos, h.batch_length)
        out += [r.offset for r in batch.records_of(data, pos)]
    return out


def test_a_filtered_fetch_returns_only_the_matches_and_where_to_go_on(tmp_path):
    lg = Log(tmp_path)
    for j in range(20):
        lg.append(["rare" if (j * 50 + i) % 97 == 0 else "common" for i in range(50)])
    lg.publish()
    data, hwm, start, nxt = lg.answer_now(lg.fetch(0))
    assert offsets(data) == lg.rare and nxt == hwm == 1000 and start == 0
    data, _, _, nxt = lg.answer_now(lg.fetch(lg.rare[3]))  # from the middle: nothing before the offset comes back
    assert offsets(data) == lg.rare[3:] and nxt == 1000


def test_a_fully_filtered_range_is_an_empty_reply_that_moves_the_offset_on(tmp_path):
    lg = Log(tmp_path)
    for _ in range(5):
        lg.append(["common"] * 100)
    lg.publish()
    data, hwm, _, nxt = lg.answer_now(lg.fetch(0))
    assert data == b"" and nxt == hwm == 500
    data, _, _, nxt = lg.answer_now(lg.fetch(500))  # at the end: nothing read, nothing skipped
    assert data == b"" and nxt == 500


def test_one_reply_reads_at_most_the_scan_limit_and_the_next_goes_on_from_there(tmp_path):
    lg = Log(tmp_path, scan=8 << 10)
    for j in range(40):
        lg.append(["rare" if (j * 30 + i) % 41 == 0 else "common" for i in range(30)])  # ~1.5 KiB a batch
    lg.publish()
    off, got, replies = 0, [], 0
    while off < 1200:
        data, _, _, nxt = lg.answer_now(lg.fetch(off))
        assert nxt > off
        got += offsets(data)
        off, replies = nxt, replies + 1
    assert got == lg.rare and replies >= 5


def test_max_bytes_counts_the_matching_bytes_and_splits_the_reply(tmp_path):
    lg = Log(tmp_path)
    for _ in range(10):
        lg.append(["rare", "common"] * 25)
    lg.publish()
    off, got = 0, []
    while off < 500:
        data, _, _, nxt = lg.answer_now(lg.fetch(off, max_bytes=600))
        assert len(data) <= 600 or len(offsets(data)) == 1
        got += offsets(data)
        off = nxt
    assert got == lg.rare


def test_a_filtered_long_poll_waits_through_writes_it_filters_out(tmp_path):
    lg = Log(tmp_path)
    lg.append(["common"] * 10)
    lg.publish()
    req = lg.fetch(10, max_wait_ms=5000)
    assert lg.svc.start(b"c", req, time.monotonic(), flt=lg.svc.filter_of(req))  # parked: nothing matches yet
    for _ in range(3):
        lg.append(["common"] * 10)
        assert lg.svc.woken(lg.publish()) == []  # new data, none of it matching: still waiting
    lg.append(["common", "rare", "common"])
    assert [p.req for p in lg.svc.woken(lg.publish())] == [req]
    data, _, _, nxt = lg.svc.answer(req)
    assert offsets(data) == [41] and nxt == 43


def test_a_filtered_long_poll_that_times_out_still_moves_the_offset_on(tmp_path):
    lg = Log(tmp_path)
    lg.append(["common"] * 10)
    lg.publish()
    req = lg.fetch(0, max_wait_ms=50)
    now = time.monotonic()
    assert lg.svc.start(b"c", req, now, flt=lg.svc.filter_of(req))
    lg.append(["common"] * 5)
    assert lg.svc.woken(lg.publish()) == []
    assert [p.req for p in lg.svc.timed_out(now + 1)] == [req]
    data, _, _, nxt = lg.svc.answer(req)
    assert data == b"" and nxt == 15


def test_a_filtered_long_poll_is_answered_once_it_has_read_the_scan_limit(tmp_path):
    lg = Log(tmp_path, scan=4 << 10)
    lg.append(["common"] * 10)
    lg.publish()
    req = lg.fetch(0, max_wait_ms=60_000)
    assert lg.svc.start(b"c", req, time.monotonic(), flt=lg.svc.filter_of(req))
    woken = []
    for _ in range(20):
        lg.append(["common"] * 30)
        woken = lg.svc.woken(lg.publish())
        if woken:
            break
    assert [p.req for p in woken] == [req]  # well before its minute: it read its 4 KiB of log
    data, _, _, nxt = lg.svc.answer(req)
    assert data == b"" and 0 < nxt < lg.log.high_watermark + 1


def test_min_bytes_counts_matching_bytes(tmp_path):
    lg = Log(tmp_path)
    lg.append(["rare"] + ["common"] * 20)
    lg.publish()
    one = len(batch.encode_batch([b"value-0"], headers=[batch.encode_headers([("tag", b"rare")])]))
    req = lg.fetch(0, max_wait_ms=5000, min_bytes=2 * one)
    assert lg.svc.start(b"c", req, time.monotonic(), flt=lg.svc.filter_of(req))  # one match: not enough
    lg.append(["common"] * 20)
    assert lg.svc.woken(lg.publish()) == []
    lg.append(["rare"])
    assert [p.req for p in lg.svc.woken(lg.publish())] == [req]
    data, _, _, nxt = lg.svc.answer(req)
    assert offsets(data) == [0, 41] and nxt == 42


def test_an_unfiltered_fetch_never_runs_filter_code(tmp_path, monkeypatch):
    lg = Log(tmp_path)
    for _ in range(3):
        lg.append(["rare", "common"])
    lg.publish()

    def boom(*a, **k):
        raise AssertionError("filter code on an unfiltered fetch")

    monkeypatch.setattr(filters, "select", boom)
    monkeypatch.setattr(fetch_mod.FetchService, "_gather_filtered", boom)
    data, hwm, _, nxt = lg.answer_now(lg.fetch(0, flt=None))
    assert offsets(data) == list(range(6)) and nxt == hwm == 6
    req = lg.fetch(6, flt=None, max_wait_ms=5000, min_bytes=1)
    assert lg.svc.start(b"c", req, time.monotonic(), flt=None)
    lg.append(["common"])
    assert [p.req for p in lg.svc.woken(lg.publish())] == [req]
    data, _, _, nxt = lg.svc.answer(req)
    assert offsets(data) == [6] and nxt == 7


def test_a_filtered_fetch_outside_the_log_is_offset_out_of_range(tmp_path):
    lg = Log(tmp_path)
    lg.append(["rare"])
    lg.publish()
    from hpbroker.protocol.errors import BrokerError, ErrorCode
    with pytest.raises(BrokerError) as ei:
        lg.answer_now(lg.fetch(5))
    assert ei.value.code == ErrorCode.OFFSET_OUT_OF_RANGE
