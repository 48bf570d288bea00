"""The Producer against a real broker with small limits and a "slow disk".

The broker runs with a 1 MiB ring, 64 KiB batch and request limits and a
200 ms ring-full timeout (docs/config.md).  (The limits stay under an
eighth of the ring, the largest record a ring takes: the config check only
asks for a quarter, and a request between the two gets INTERNAL.)  A test makes the disk slow by
suspending the writer process (SIGSTOP through psutil), as
tests/test_broker_faults.py does: produce requests then wait for a
durability that does not come, and once the ring is full the acceptor
answers BUSY.  Every test resumes the writer in a ``finally`` and the
fixture stops the broker.
"""

from __future__ import annotations


import time

import psutil
import pytest

from brokerproc import BrokerProcess
from hpbroker import batch
from hpbroker.client import BrokerError, Consumer, ErrorCode, Producer, RecordMetadata
from hpbroker.protocol.codec import encode_request
from hpbroker.protocol.messages import Produce, Stats
from rawclient import RawClient

LIMIT = 65536  # broker.max_batch_bytes and max_request_bytes below
SMALL_LIMITS = (
    f"[broker]\nmax_batch_bytes = {LIMIT}\nmax_request_bytes = {LIMIT}\n"
    "[ring]\ncapacity_bytes = 1048576\nfull_timeout_ms = 200\ndead_after_ms = 120000\n"
)
VALUE = b"p" * 1000
PER_BATCH = 60  # ~60 KiB per send_batch: the 1 MiB ring holds about 16 of them



class SlowDisk:
    """The broker's writer process, suspended inside ``with``."""

    def __init__(self, b: BrokerProcess):
        self.writer = psutil.Process(b.child_pid("writer0"))

    def __enter__(self):
        self.writer.suspend()
        return self

    def __exit__(self, *exc):
        self.writer.resume()


@pytest.fixture
def small(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL_LIMITS)
    b = BrokerProcess(tmp_path / "data", args=("--config", str(cfg), "--partitions", "4")).start()
    try:
        yield b
    finally:
        b.stop()


def _consume(url: str, topic: str, partition: int, n: int) -> list:
    got, idle = [], 0
    with Consumer(url, topic, partitions=[partition], auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        while len(got) < n and idle < 60:
            more = c.poll(timeout_ms=500, max_records=97)  # polls that end inside batches
            idle = 0 if more else idle + 1
            got += more
    return got


def _wait_until_the_ring_is_full(url: str, topic: str, timeout_s: float = 60) -> int:
    """Wait until the acceptor's ring has no room for one more request the
    size of ``_busy_reply_seen``'s probe (before that, the probe could fit,
    and wait for the suspended disk instead of getting BUSY); return how many
    of the test's own requests the acceptor then holds.

    Once the test's requests arrive, requests exactly that size go to
    partition 1 (same topic, same values; partition 0 is the one the tests
    read), each followed by a Stats request on the same connection.  An
    acceptor answers one connection in order, so a request answered BUSY
    before the Stats reply shows the ring full; one that fitted is not
    answered (it waits for the disk) and the next one goes.  With the writer
    suspended the ring only fills, so this ends."""
    c = RawClient(url, timeout_ms=30_000)
    probe = batch.encode_batch([VALUE] * PER_BATCH)
    deadline = time.monotonic() + timeout_s
    fitted = 0
    try:
        while c.call(Stats(id=c.next_id()))[0].stats["pending_requests"] == 0:
            assert time.monotonic() < deadline, f"none of the test's requests reached the broker in {timeout_s} s"
            time.sleep(0.05)
        while True:
            req = Produce(id=c.next_id(), topic=topic, partition=1, timeout_ms=120_000)
            c.send_frames(encode_request(req, [probe]))
            st = Stats(id=c.next_id())
            c.send_frames(encode_request(st))
            rep, _ = c.recv()
            if rep.id == req.id:
                assert rep.code == ErrorCode.BUSY and "ring stayed full" in rep.message, rep
                rep, _ = c.recv()
                assert rep.id == st.id, rep
                return rep.stats["pending_requests"] - fitted
            assert rep.id == st.id, rep
            fitted += 1  # it waits for the disk, unanswered
            assert time.monotonic() < deadline, (f"the ring still had room after {timeout_s} s: "
                                                 f"{rep.stats['pending_requests']} requests wait, {fitted} of them probes")
    finally:
        c.close()


def _busy_reply_seen(url: str, topic: str) -> BrokerError:
    """A retries=0 probe behind the ring-filling traffic: the broker's answer."""
    with Producer(url, retries=0, request_timeout_ms=120_000) as probe:
        f = probe.send_batch(topic, [VALUE] * PER_BATCH, partition=0)
        return f.exception(timeout=60)


def test_busy_is_retried_and_every_message_lands_once(small):
    n = 40  # 40 x ~60 KiB in flight at once: more than twice the ring
    p = Producer(small.url, retries=100_000, retry_backoff_ms=20, max_in_flight=64, request_timeout_ms=120_000)
    try:
        p.partitions_for("retry")
        with SlowDisk(small):
            futs = [p.send_batch("retry", [b"%d-%d" % (j, i) + VALUE for i in range(PER_BATCH)], partition=0)
                    for j in range(n)]
            assert 0 < _wait_until_the_ring_is_full(small.url, "retry") < n
            err = _busy_reply_seen(small.url, "retry")
            assert isinstance(err, BrokerError) and err.code == ErrorCode.BUSY, err
            assert not all(f.done() for f in futs)
        p.flush(120)
        bases = sorted(f.result().offset for f in futs)
    finally:
        p.close(30)
    # retried, never duplicated or lost: the batches tile offsets 0 .. n*PER_BATCH-1
    assert bases == [PER_BATCH * j for j in range(n)]
    got = _consume(small.url, "retry", 0, n * PER_BATCH)
    assert [m.offset for m in got] == list(range(n * PER_BATCH))
    assert sorted(m.value for m in got) == sorted(b"%d-%d" % (j, i) + VALUE for j in range(n) for i in range(PER_BATCH))


def test_with_retries_zero_busy_reaches_the_future(small):
    n = 40
    p = Producer(small.url, retries=0, max_in_flight=64, request_timeout_ms=120_000)
    try:
        p.partitions_for("noretry")
        with SlowDisk(small):
            futs = [p.send_batch("noretry", [b"%d-%d" % (j, i) + VALUE for i in range(PER_BATCH)], partition=0)
                    for j in range(n)]
            last = futs[-1].exception(timeout=60)  # the ring was full long before the last one
        p.flush(120)
    finally:
        p.close(30)
    assert isinstance(last, BrokerError) and last.code == ErrorCode.BUSY
    failed = [f.exception() for f in futs if f.exception() is not None]
    assert failed and all(e.code == ErrorCode.BUSY for e in failed)
    ok = [j for j, f in enumerate(futs) if f.exception() is None]
    assert ok, "the requests that fitted in the ring are written once the disk catches up"
    # exactly the acknowledged batches were written, in their order
    got = _consume(small.url, "noretry", 0, len(ok) * PER_BATCH)
    assert [m.value for m in got] == [b"%d-%d" % (j, i) + VALUE for j in ok for i in range(PER_BATCH)]
    assert sorted(futs[j].result().offset for j in ok) == [PER_BATCH * k for k in range(len(ok))]


def test_buffer_memory_bounds_send_while_the_disk_is_slow(small):
    p = Producer(small.url, buffer_memory=100_000, max_block_ms=300, request_timeout_ms=120_000)
    try:
        p.partitions_for("mem")
        with SlowDisk(small):
            first = p.send("mem", b"x" * 60_000, partition=0)  # held until acknowledged: never, yet
            with pytest.raises(BrokerError) as ei:
                p.send("mem", b"y" * 60_000, partition=0)
            assert ei.value.code == ErrorCode.BUSY and "buffer_memory" in ei.value.message
            assert not first.done()
        assert first.result(60) == RecordMetadata("mem", 0, 0)
        assert p.send("mem", b"z" * 60_000, partition=0).result(60).offset == 1  # the space came back
    finally:
        p.close(30)
    assert [m.value[:1] for m in _consume(small.url, "mem", 0, 2)] == [b"x", b"z"]


def test_too_large_message_fails_alone(small):
    errors = []
    with Producer(small.url, linger_ms=50) as p:  # default retries: MESSAGE_TOO_LARGE is not retriable
        small1 = p.send("big", b"s1", partition=0)
        big = p.send("big", b"B" * (LIMIT + 1), partition=0).add_errback(errors.append)
        small2 = p.send("big", b"s2", partition=0)
        p.flush(60)
    assert (small1.result().offset, small2.result().offset) == (0, 1)
    assert isinstance(big.exception(), BrokerError) and big.exception().code == ErrorCode.MESSAGE_TOO_LARGE
    assert errors == [big.exception()]
    with pytest.raises(BrokerError):
        big.result()
    assert [m.value for m in _consume(small.url, "big", 0, 2)] == [b"s1", b"s2"]


def test_send_batch_over_the_limits_is_split(small):
    values = [bytes([i % 256]) * 1000 for i in range(3000)]  # ~3 MB: many batches, many requests
    with Producer(small.url) as p:
        assert p.send_batch("split", values, partition=2).result(60) == RecordMetadata("split", 2, 0)
    with Consumer(small.url, "split", partitions=[2], auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        raw = []
        while sum(rb.record_count for rb in raw) < 3000:
            raw += c.poll_batches(timeout_ms=1000, max_bytes=LIMIT)
    bases = [h.base_offset for rb in raw for _, h in batch.iter_batches(rb.data)]
    assert len(bases) > 10 and bases == sorted(bases)
    assert [r.value for rb in raw for pos, _ in batch.iter_batches(rb.data) for r in batch.records_of(rb.data, pos)] == values
    assert [m.value for m in _consume(small.url, "split", 2, 3000)] == values


def test_batches_from_send_stay_within_the_brokers_batch_limit(small):
    """send() fills a batch up to the broker's max_batch_bytes counting the
    64-byte header too, so a full batch is never refused as too large
    (1024-byte records: 64 of them fill the records area exactly)."""
    with Producer(small.url, batch_size=1 << 30, linger_ms=200, retries=0) as p:
        futs = [p.send("full", b"v" * (1024 - batch.ENTRY_SIZE), partition=1) for _ in range(1000)]
        p.flush(60)
    assert [f.result().offset for f in futs] == list(range(1000))
