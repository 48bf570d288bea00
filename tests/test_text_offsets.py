"""MetaQ byte offsets over real segment files (hpbroker/text/offsets.py).

A partition log is written with the broker's own PartitionLog (small
segments, so there are several), with batches as the text port builds them
and as a ZeroMQ producer builds them (no headers, an attribute header);
then read the way a MetaQ consumer reads: ask at an offset, add the sizes
of the messages received, follow 301s.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from hpbroker import batch as B
from hpbroker.io import layout
from hpbroker.io.config import LogConfig
from hpbroker.io.log import PartitionLog
from hpbroker.io.reader import PartitionReader
from hpbroker.text import offsets as O
from hpbroker.text import records as R
from hpbroker.text.msgids import MsgIds


class FileSource(O.Source):
    def __init__(self, d: str):
        self.d = d
        self.reader = PartitionReader(d)
        self.reads = 0

    def segments(self):
        return layout.list_segments(self.d)

    def read(self, offset, max_bytes, hwm):
        self.reads += 1
        return self.reader.read(offset, max_bytes, hwm)


def write_log(d, batches: int = 80, seed: int = 1, segment_bytes: int = 1 << 15):
    """A log of mixed batches; returns (log, [(base, [(data, attribute)...])])."""
    log = PartitionLog(str(d), LogConfig(segment_bytes=segment_bytes))
    rng = random.Random(seed)
    ids = MsgIds(1)
    written = []
    for k in range(batches):
        n = rng.randint(1, 30)
        data = [rng.randbytes(rng.randint(0, 200)) for _ in range(n)]
        kind = k % 5
        if kind == 3:  # a ZeroMQ producer's batch: keys, no headers
            buf = B.encode_batch(data, keys=[b"k%d" % i for i in range(n)])
            attrs = [None] * n
        elif kind == 4:  # a ZeroMQ producer's batch with the attribute header on some records
            attrs = [b"a%d" % i if i % 2 else None for i in range(n)]
            hdrs = [B.encode_headers([(R.ATTR_HEADER, a)]) if a else None for a in attrs]
            buf = B.encode_batch(data, headers=hdrs)
        else:  # the text port's
            attrs = [b"colour" if kind == 2 and i % 3 == 0 else None for i in range(n)]
            bodies = [struct.pack(">i", len(a)) + a + v if a else v for a, v in zip(attrs, data)]
            flags = [1 if a else 0 for a in attrs] if kind == 2 else None
            buf = R.build_batch(bodies, flags, ids.block(n), 1)
        base = log.append(buf)
        written.append((base, list(zip(data, attrs))))
    log.sync()
    return log, written


def consume(view, hwm, start=0, max_size=3000):
    """Like MetaQ's consumer: (messages as (offset, data, attribute, msgId), 301s followed, end offset)."""
    off, got, moves = start, [], 0
    while True:
        r = view.read(off, max_size, hwm)
        if r is O.PENDING:  # the index was rebuilt: ask again (the listener does, next turn)
            continue
        if isinstance(r, O.Moved):
            assert r.offset > off
            off, moves = r.offset, moves + 1
            continue
        if isinstance(r, O.NoData):
            return got, moves, off
        assert isinstance(r, O.Messages)
        data = b"".join(r.parts)
        pos = 0
        while pos + 20 <= len(data):
            length, crc, msg_id, flag = struct.unpack_from(">iiqi", data, pos)
            if pos + 20 + length > len(data):
                break
            payload = data[pos + 20:pos + 20 + length]
            attr = None
            if flag & 1:
                n = struct.unpack_from(">i", payload)[0]
                attr, payload = payload[4:4 + n], payload[4 + n:]
            got.append((off + pos, payload, attr, msg_id))
            pos += 20 + length
        assert pos == r.size > 0
        off += pos


@pytest.fixture
def log(tmp_path):
    d = tmp_path / "t-0"
    lg, written = write_log(d)
    yield str(d), lg, written
    lg.close()


def test_a_consumer_reads_every_message_once_in_order_across_segments(log):
    d, lg, written = log
    assert len(layout.list_segments(d)) >= 3
    view = O.PartitionView(FileSource(d), R.topic_key("t", 0))
    got, moves, end = consume(view, lg.high_watermark)
    assert [(v, a) for _, v, a, _ in got] == [m for _, ms in written for m in ms]
    assert moves == len(layout.list_segments(d)) - 1  # one 301 per segment boundary
    offsets = [o for o, *_ in got]
    assert offsets == sorted(set(offsets))  # grow with the records, never repeat
    assert view.bounds(lg.high_watermark)[1] == end


def test_offsets_are_the_same_for_a_fresh_view_and_resuming_anywhere_gives_the_rest(log):
    d, lg, written = log
    hwm = lg.high_watermark
    first = O.PartitionView(FileSource(d), 7)
    got, _, end = consume(first, hwm)
    rng = random.Random(3)
    for k in rng.sample(range(len(got)), 12):
        fresh = O.PartitionView(FileSource(d), 7)  # after a restart: no index
        rest, _, end2 = consume(fresh, hwm, start=got[k][0])
        assert rest == got[k:] and end2 == end


def test_put_offsets_match_what_consumers_see(log):
    d, lg, written = log
    hwm = lg.high_watermark
    view = O.PartitionView(FileSource(d), 7)
    got, _, _ = consume(view, hwm)
    by_record = {}
    i = 0
    for base, msgs in written:
        for j in range(len(msgs)):
            by_record[base + j] = got[i][0]
            i += 1
    fresh = O.PartitionView(FileSource(d), 7)
    for base, _ in written:  # what the text port computes for a batch it wrote
        assert fresh.record_position(base, base + 1) == by_record[base]


def test_msgids_round_trip_and_derived_ones_are_negative_and_distinct(log):
    d, lg, written = log
    got, _, _ = consume(O.PartitionView(FileSource(d), 7), lg.high_watermark)
    ids = [i for *_, i in got]
    assert len(set(ids)) == len(ids)
    assert any(i < 0 for i in ids) and any(i > 0 for i in ids)


def test_a_misaligned_offset_moves_to_the_start_of_its_message(log):
    d, lg, _ = log
    view = O.PartitionView(FileSource(d), 7)
    got, _, _ = consume(view, lg.high_watermark)
    off = got[5][0]
    r = view.read(off + 3, 1000, lg.high_watermark)
    assert r == O.Moved(off, "not the start of a message")


def test_below_the_log_start_and_past_the_end(log):
    d, lg, _ = log
    hwm = lg.high_watermark
    view = O.PartitionView(FileSource(d), 7)
    lo, hi = view.bounds(hwm)
    assert view.read(hi, 1000, hwm) == O.NoData(hi, False, hi)
    assert view.read(hi + 5, 1000, hwm) == O.NoData(hi + 5, True, hi)
    assert view.nearest(hi + 99, hwm) == hi and view.nearest(-5, hwm) == lo
    second = layout.list_segments(d)[1]
    assert view.nearest((second << O.SLOT_BITS) + 10, hwm) == second << O.SLOT_BITS


def test_retention_keeps_the_offsets_of_what_remains(log):
    d, lg, _ = log
    hwm = lg.high_watermark
    before, _, _ = consume(O.PartitionView(FileSource(d), 7), hwm)
    view = O.PartitionView(FileSource(d), 7)
    consume(view, hwm)  # indexed
    lg.delete_oldest_segment(lambda paths: [__import__("os").unlink(p) for p in paths])
    start = layout.list_segments(d)[0] << O.SLOT_BITS
    r = view.read(0, 1000, hwm + 1)  # a relist, as a new high watermark brings
    assert r == O.Moved(start, "below the log start")
    after, _, _ = consume(O.PartitionView(FileSource(d), 7), hwm, start=start)
    assert after == [m for m in before if m[0] >= start] and after


def test_a_cold_lookup_scans_in_steps_within_its_budget(log, monkeypatch):
    d, lg, _ = log
    monkeypatch.setattr(O, "READ_BYTES", 2048)  # so the last segment takes several reads
    hwm = lg.high_watermark
    src = FileSource(d)
    view = O.PartitionView(src, 7)
    last = layout.list_segments(d)[-1]
    target = view.bounds(hwm)[1]  # warms nothing for the others: a new view below
    cold = O.PartitionView(FileSource(d), 7)
    steps = 0
    while (r := cold.bounds(hwm, budget=1)) is O.PENDING:
        steps += 1
        assert cold.source.reads <= 2 * steps  # per step: one read that checks the tail, one that goes on
    assert r[1] == target and steps >= 2
    assert last << O.SLOT_BITS <= target


def test_an_index_over_a_rewritten_log_is_dropped_where_the_log_changed(tmp_path):
    d = tmp_path / "t-0"
    lg, written = write_log(d, batches=20, segment_bytes=1 << 30)
    hwm = lg.high_watermark
    view = O.PartitionView(FileSource(str(d)), 7)
    consume(view, hwm)
    cut = written[10][0]
    lg.close()
    from hpbroker.io.storage import Storage

    with Storage(str(tmp_path)) as st:
        st.truncate("t", 0, cut)  # as a slave cutting a divergent tail
        log2 = st.partition("t", 0)
        rng = np.random.default_rng(5)
        for _ in range(6):
            log2.append(B.encode_batch([rng.bytes(50) for _ in range(int(rng.integers(1, 9)))]))
        log2.sync()
        hwm2 = log2.high_watermark
        fresh, _, end = consume(O.PartitionView(FileSource(str(d)), 7), hwm2)
        reused, _, end2 = consume(view, hwm2)
        assert reused == fresh and end2 == end
