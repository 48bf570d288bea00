"""The Producer's open batches (hpbroker/client/accumulator.py) on a fake clock, without a broker."""

from __future__ import annotations

from hpbroker import batch
from hpbroker.client.accumulator import Accumulator, Batch
from hpbroker.client.records import FutureRecordMetadata, RecordMetadata

E = batch.ENTRY_SIZE


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(limit: int = 1 << 20, linger: float = 0.005):
    clock = Clock()
    events: list[str] = []
    acc = Accumulator(lambda: limit, linger, on_open=lambda: events.append("open"),
                      on_full=lambda: events.append("full"), clock=clock, wall_ms=lambda: 5000)
    return acc, clock, events


def add(acc: Accumulator, value: bytes, partition: int = 0, key=None, ts=None, topic: str = "t") -> FutureRecordMetadata:
    return acc.append(topic, partition, value, key, ts, len(value) + E + (len(key) if key else 0))


def test_messages_of_a_partition_share_one_open_batch_and_one_future():
    acc, clock, events = make()
    f1, f2 = add(acc, b"a"), add(acc, b"b")
    assert isinstance(f1, FutureRecordMetadata) and f1._batch is f2._batch
    assert (f1._index, f2._index) == (0, 1)
    assert list(acc.open) == [("t", 0)] and acc.open["t", 0].values == [b"a", b"b"]
    assert events == ["open"]  # the I/O thread hears of the batch once, as it opens
    add(acc, b"c", partition=1)
    assert set(acc.open) == {("t", 0), ("t", 1)} and events == ["open", "open"]


def test_a_batch_is_sealed_when_it_reaches_the_limit():
    limit = batch.HEADER_SIZE + 3 * (10 + E)
    acc, clock, events = make(limit)
    for _ in range(3):
        add(acc, b"x" * 10)
    assert not acc.open and len(acc.sealed) == 1 and events == ["open", "full"]
    b = acc.sealed[0]
    assert b.acc.values == [b"x" * 10] * 3 and b.nbytes == 3 * (10 + E)


def test_a_message_that_does_not_fit_seals_the_batch_and_opens_the_next():
    limit = batch.HEADER_SIZE + 100
    acc, clock, events = make(limit)
    add(acc, b"x" * 50)
    f = add(acc, b"y" * 50)  # 50 + 16 more would pass 100
    assert len(acc.sealed) == 1 and acc.open["t", 0].values == [b"y" * 50] and f._index == 0
    assert events == ["open", "open"]


def test_an_oversized_message_gets_a_batch_of_its_own():
    acc, clock, events = make(batch.HEADER_SIZE + 100)
    add(acc, b"s")
    add(acc, b"L" * 500)
    assert [b.acc.values for b in acc.sealed] == [[b"s"], [b"L" * 500]] and not acc.open


def test_linger_seals_on_the_injected_clock():
    acc, clock, events = make(linger=0.005)
    add(acc, b"a")
    assert acc.next_due() == 100.005
    assert acc.take_ready(100.004) == [] and acc.open
    clock.now = 100.003
    add(acc, b"b", partition=1)  # opened later: its own linger
    assert acc.next_due() == 100.005  # the oldest decides
    ready = acc.take_ready(100.005)
    assert [b.partition for b in ready] == [0] and list(acc.open) == [("t", 1)]
    assert acc.next_due() == 100.008
    assert [b.partition for b in acc.take_ready(100.008)] == [1] and acc.next_due() is None


def test_a_flush_or_close_seals_everything_at_once():
    acc, clock, events = make(linger=10.0)
    add(acc, b"a")
    acc.flushing += 1
    assert acc.next_due() == 0.0
    assert len(acc.take_ready(clock.now)) == 1
    acc.flushing -= 1
    add(acc, b"b")
    assert acc.next_due() == 110.0
    acc.closed = True
    assert len(acc.take_ready(clock.now)) == 1 and not acc.open


def test_sealed_batches_are_handed_over_in_send_order():
    acc, clock, events = make(batch.HEADER_SIZE + 2 * (1 + E))
    for p in (0, 1, 0, 1, 2):
        add(acc, b"v", partition=p)
    assert acc.next_due() == 0.0  # sealed ones wait: now
    assert [b.partition for b in acc.take_ready(clock.now)] == [0, 1]  # the two that filled; 2 lingers
    assert list(acc.open) == [("t", 2)]


def test_send_batch_seals_the_open_batch_first_so_partition_order_holds():
    acc, clock, events = make()
    add(acc, b"a")
    acc.seal_partition("t", 0)
    acc.seal_partition("t", 1)  # nothing open there: nothing happens
    acc.push(Batch("t", 0, [b"frame"], None, 5))
    ready = acc.take_ready(clock.now)
    assert [b.frames for b in ready] == [None, [b"frame"]] and ready[0].acc.values == [b"a"]


def test_keys_and_timestamps_are_back_filled_only_once_one_appears():
    acc, clock, events = make()
    add(acc, b"a")
    assert acc.open["t", 0].keys is None and acc.open["t", 0].ts is None
    add(acc, b"b", key=b"k")
    add(acc, b"c", ts=7)
    add(acc, b"d")
    o = acc.open["t", 0]
    assert o.keys == [None, b"k", None, None]
    assert o.ts == [5000, 5000, 7, 5000]  # wall_ms() of the batch's opening, or the one given


def test_a_sealed_batch_encodes_to_the_messages_it_holds():
    acc, clock, events = make()
    futs = [add(acc, b"a", key=b"k1"), add(acc, b"b"), add(acc, b"c", ts=6000)]
    (b,) = acc.take_ready(clock.now + 1)
    b.encode()
    assert b.acc is None and len(b.frames) == 1
    recs = batch.records_of(b.frames[0])
    assert [(r.key, r.value, r.timestamp) for r in recs] == [(b"k1", b"a", 5000), (None, b"b", 5000), (None, b"c", 6000)]
    b.future.set_result(RecordMetadata("t", 0, 40))
    assert [f.result(0).offset for f in futs] == [40, 41, 42]


def test_the_limit_is_read_as_each_batch_opens():
    limits = [batch.HEADER_SIZE + 1 + E]
    acc = Accumulator(lambda: limits[0], 1.0, on_open=lambda: None, on_full=lambda: None, clock=Clock())
    add(acc, b"a")  # fills the first batch
    limits[0] = 1 << 20  # the broker's max_batch_bytes arrived
    add(acc, b"b")
    add(acc, b"c")
    assert acc.open["t", 0].values == [b"b", b"c"]


def test_take_partitions_seals_and_takes_only_those_partitions_in_order():
    """A spilling producer moving a partition's waiting batches to its
    journal: the open batch is sealed, the sealed ones taken in send order,
    the other partitions' keep their places; the per-partition counts the
    re-sends wait for count every batch from its opening."""
    acc, clock, events = make(limit=batch.HEADER_SIZE + 2 * (1 + E))  # two 1-byte values per batch
    acc.outstanding = {}
    for v in (b"a", b"b", b"c"):
        add(acc, v, partition=0)
    add(acc, b"x", partition=1)
    add(acc, b"d", partition=0)
    assert acc.outstanding == {("t", 0): 2, ("t", 1): 1}
    taken = acc.take_partitions({("t", 0)})
    assert [b.acc.values for b in taken] == [[b"a", b"b"], [b"c", b"d"]]
    assert [(b.topic, b.partition) for b in taken] == [("t", 0), ("t", 0)] and taken[0].order < taken[1].order
    assert list(acc.open) == [("t", 1)] and not acc.sealed
