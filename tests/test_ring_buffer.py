"""The ring over a plain bytearray: index arithmetic, padding, the API, waiting (no processes)."""

from __future__ import annotations

import collections
import threading

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hpbroker.ring import (
    BusySpin, PeerDead, Reader, ReaderGroup, Ring, RingClosed, RingCorrupt, RingError, RingFull,
    SpinThenBlock, ThreadSignal, Writer, layout as L,
)


def make(capacity=4096, alignment=8):
    buf = bytearray(L.segment_bytes(capacity))
    ring = Ring(buf, init=True, capacity=capacity, alignment=alignment)
    return buf, ring, ring.writer(full_timeout=0), ring.reader()


def drain_all(reader):
    out = []
    reader.drain(lambda t, v: out.append((t, bytes(v))))
    return out


# -- pure arithmetic -------------------------------------------------------------------
@given(st.integers(0, 1 << 20), st.sampled_from(L.ALIGNMENTS))
def test_align_is_smallest_multiple(n, a):
    r = L.align(n, a)
    assert r % a == 0 and r >= n and r - n < a


@given(st.integers(0, 1 << 40), st.integers(1, 512).map(lambda k: k * 8), st.sampled_from([4096, 1 << 16]))
def test_plan_never_straddles_the_end(tail, rec, cap):
    tail -= tail % 8
    rec = min(rec, L.max_record(cap))
    pad, pos = L.plan(tail, rec, cap)
    assert pos == tail + pad
    index = pos & (cap - 1)
    assert index + rec <= cap  # the record is contiguous
    if pad:
        assert index == 0 and (tail & (cap - 1)) + pad == cap and pad < rec


@given(st.integers(1, (1 << 31) - 1), st.integers(-1, L.MAX_TYPE_ID))
def test_record_word_roundtrip(length, type_id):
    w = L.record_word(length, type_id)
    assert 0 <= w < 1 << 64
    assert L.word_length(w) == length and L.word_type(w) == type_id


# -- model-based: random writes/reads against a deque --------------------------------------
class RingModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.cap = 4096
        self.align = 8
        self.buf = bytearray(L.segment_bytes(self.cap))
        self.ring = Ring(self.buf, init=True, capacity=self.cap, alignment=self.align)
        self.w = self.ring.writer(full_timeout=0)
        self.r = self.ring.reader()
        self.model = collections.deque()
        self.seq = 0

    def _payload(self, n):
        self.seq += 1
        return bytes((self.seq + i) & 0xFF for i in range(n))

    @rule(n=st.one_of(st.integers(0, 64), st.integers(0, 512 - 8), st.just(512 - 8)), t=st.integers(0, 5))
    def write(self, n, t):
        p = self._payload(n)
        try:
            self.w.write(p, type_id=t, timeout=0)
        except RingFull:
            return
        self.model.append((t, p))

    @rule(sizes=st.lists(st.integers(0, 200), min_size=1, max_size=30))
    def write_many(self, sizes):
        ps = [self._payload(n) for n in sizes]
        try:
            self.w.write_many(ps, type_id=7, timeout=0)
            k = len(ps)
        except RingFull as e:
            k = e.written
        self.model.extend((7, p) for p in ps[:k])

    @rule(data=st.data())
    def exact_fit(self, data):
        """A record that ends exactly at the end of the buffer (or one byte too big: padding)."""
        to_end = self.cap - (self.w.position & (self.cap - 1))
        n = to_end - 8 - data.draw(st.sampled_from([0, -1, 1, -7, -8]))
        if not 0 <= n <= self.ring.max_payload:
            return
        self.write(n, 1)

    @rule(n=st.integers(0, 504), keep=st.integers(0, 504), abort=st.booleans())
    def claim(self, n, keep, abort):
        try:
            view = self.w.claim(n, type_id=3, timeout=0)
        except RingFull:
            return
        p = self._payload(n)
        view[:] = p
        if abort:
            self.w.abort()
        else:
            keep = min(keep, n)
            self.w.commit(keep)
            self.model.append((3, p[:keep]))

    @rule(limit=st.one_of(st.none(), st.integers(1, 5)))
    def drain(self, limit):
        got = []
        self.r.drain(lambda t, v: got.append((t, bytes(v))), limit)
        for g in got:
            assert g == self.model.popleft()

    @rule(limit=st.integers(1, 5))
    def take_release(self, limit):
        got = [(t, bytes(v)) for t, v in self.r.take(limit)]
        self.r.release()
        for g in got:
            assert g == self.model.popleft()

    @precondition(lambda self: self.model)
    @rule()
    def read_one(self):
        assert self.r.read(timeout=0) == self.model.popleft()[1]

    @invariant()
    def positions(self):
        head, tail = self.ring.head, self.ring.tail
        assert 0 <= tail - head <= self.cap
        assert head % self.align == 0 and tail % self.align == 0
        assert self.w.position == tail and self.r.position == head
        # the word at the consumer position is unpublished exactly when the model is empty
        assert self.r.available() == bool(self.model) or self._only_padding_left()

    def _only_padding_left(self):
        w = self.ring.dq[(self.ring.head & (self.cap - 1)) >> 3]
        return not self.model and L.word_type(w) == L.PADDING_TYPE


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@pytest.mark.parametrize("alignment", L.ALIGNMENTS)
@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 504), min_size=1, max_size=300))
def test_streams_any_sizes_in_order(alignment, sizes):
    _, ring, w, r = make(4096, alignment)
    out = []
    for i, n in enumerate(sizes):
        p = bytes([i & 0xFF]) * n
        while True:
            try:
                w.write(p, type_id=i % 3, timeout=0)
                break
            except RingFull:
                out += drain_all(r)
    out += drain_all(r)
    assert out == [(i % 3, bytes([i & 0xFF]) * n) for i, n in enumerate(sizes)]
    assert ring.head == ring.tail and ring.tail % alignment == 0


# -- edge cases by hand --------------------------------------------------------------------
def advance(w, r, index):
    """Move both positions to ``index`` (mod capacity) with ordinary records."""
    while True:
        left = (index - w.position) % 4096
        if left == 0:
            return
        w.write(b"." * (min(left, 512) - 8))
        drain_all(r)


def test_exact_fit_at_end_needs_no_padding():
    _, ring, w, r = make()
    advance(w, r, 4096 - 512)
    w.write(b"b" * (512 - 8))  # ends exactly at the end of the buffer
    assert ring.tail == 4096
    assert drain_all(r) == [(0, b"b" * 504)]
    w.write(b"c")
    assert ring.tail == 4096 + 16
    assert drain_all(r) == [(0, b"c")]


def test_record_that_does_not_fit_becomes_padding():
    _, ring, w, r = make()
    advance(w, r, 4096 - 504)
    w.write(b"b" * 504)  # needs 512: padding of 504, then the record at index 0
    assert ring.tail == 4096 + 512
    assert L.word_type(ring.dq[(4096 - 504) >> 3]) == L.PADDING_TYPE
    assert drain_all(r) == [(0, b"b" * 504)]
    assert ring.dq[(4096 - 504) >> 3] == 0  # the reader zeroed the padding word


def test_padding_inside_a_batch():
    _, ring, w, r = make()
    advance(w, r, 4096 - 24)
    w.write_many([b"a", b"b" * 20, b"c"])  # 16 fits, 32 does not: padding of 8 mid-batch
    assert ring.tail == 4096 - 24 + 16 + 8 + 32 + 16
    assert drain_all(r) == [(0, b"a"), (0, b"b" * 20), (0, b"c")]


def test_max_size_record_and_limits():
    _, ring, w, r = make()
    assert ring.max_payload == 4096 // 8 - 8
    w.write(b"m" * ring.max_payload)
    with pytest.raises(ValueError):
        w.write(b"m" * (ring.max_payload + 1))
    with pytest.raises(ValueError):
        w.claim(ring.max_payload + 1)
    with pytest.raises(ValueError):
        w.write(b"x", type_id=-1)
    assert drain_all(r) == [(0, b"m" * ring.max_payload)]


def test_full_ring_raises_ringfull_after_timeout():
    _, ring, w, r = make()
    w.full_timeout = 0.05
    with pytest.raises(RingFull):
        for _ in range(100):
            w.write(b"x" * 500)
    assert ring.tail - ring.head <= 4096
    assert len(drain_all(r)) == 4096 // 512


def test_claim_abort_publishes_nothing_and_reuses_space():
    _, ring, w, r = make()
    v = w.claim(100, type_id=9)
    v[:] = b"z" * 100
    assert not r.available()
    w.abort()
    assert ring.tail == 0 and not r.available()
    w.write(b"ok")
    assert drain_all(r) == [(0, b"ok")]
    with pytest.raises(RingError):
        w.commit()


def test_uncommitted_claim_is_invisible():
    _, ring, w, r = make()
    w.write(b"first")
    v = w.claim(64, type_id=2)
    v[:32] = b"h" * 32  # half a payload, never committed
    assert drain_all(r) == [(0, b"first")]
    assert not r.available() and r.poll() is None


def test_write_many_is_one_publication():
    _, ring, w, r = make()
    w.write_many([b"a", b"bb", b"ccc"], type_id=4)
    assert ring.tail == 3 * 16
    assert r.take(2) == [(4, memoryview(b"a")), (4, memoryview(b"bb"))]
    r.release()
    assert r.read() == b"ccc"


def test_zero_copy_from_any_buffer():
    import numpy as np

    _, ring, w, r = make()
    w.write(np.arange(10, dtype=np.int64))
    w.write(memoryview(b"view"))
    t, v = r.poll()
    assert np.frombuffer(v, dtype=np.int64).tolist() == list(range(10))
    r.release()
    assert r.read() == b"view"


def test_stale_bytes_are_never_seen_as_a_record():
    """Fill the data with garbage a reader might mistake for lengths; the protocol must not care."""
    buf, ring, w, r = make()
    for lap in range(50):
        for n in (3, 100, 250, 7, 504, 0, 33):
            w.write(b"\x41" * n)  # 0x41414141 would be a plausible length word
            got = drain_all(r)
            assert got == [(0, b"\x41" * n)]
            assert not r.available()


def test_corrupt_word_is_reported():
    _, ring, w, r = make()
    ring.dq[0] = 99999  # a length no producer writes (> max record)
    with pytest.raises(RingCorrupt):
        r.drain(lambda t, v: None)


def test_handler_exception_keeps_the_failing_record():
    _, ring, w, r = make()
    w.write_many([b"1", b"2", b"3"])
    seen = []

    def h(t, v):
        if bytes(v) == b"2" and len(seen) == 1:
            seen.append("boom")
            raise KeyError
        seen.append(bytes(v))

    with pytest.raises(KeyError):
        r.drain(h)
    r.drain(h)
    assert seen == [b"1", "boom", b"2", b"3"]


def test_reader_sees_closed_producer_after_draining():
    _, ring, w, r = make()
    w.write(b"last")
    w.close()
    assert r.read(timeout=1) == b"last"
    with pytest.raises(RingClosed):
        r.read(timeout=1)


def test_dead_peer_pid_raises_peerdead():
    _, ring, w, r = make()
    ring.set(L.PRODUCER_PID_OFF, 2**31 - 5)  # no such process
    ring.set(L.PRODUCER_START_OFF, 0)
    with pytest.raises(PeerDead):
        r.wait(timeout=1)


def test_stale_heartbeat_counts_as_dead():
    buf = bytearray(L.segment_bytes(4096))
    ring = Ring(buf, init=True)
    w = ring.writer()
    r = ring.reader(dead_after=0.05, wait=SpinThenBlock(ThreadSignal(), 0, tick_s=0.01))
    ring.set(L.PRODUCER_HEARTBEAT_OFF, 1)
    with pytest.raises(PeerDead):
        r.wait(timeout=1)


def test_busy_spin_strategy_times_out():
    _, ring, w, r = make()
    r.wait_strategy = BusySpin(tick_s=0.01)
    assert r.wait(timeout=0.02) is False
    w.write(b"x")
    assert r.wait(timeout=0.02) is True


def test_ring_rejects_bad_buffers():
    with pytest.raises(ValueError):
        Ring(bytearray(L.segment_bytes(4096)), init=True, capacity=3000)
    with pytest.raises(ValueError):
        Ring(bytearray(100), init=True, capacity=4096)
    with pytest.raises(ValueError):
        Ring(bytes(L.segment_bytes(4096)))
    with pytest.raises(RingError):
        Ring(bytearray(L.segment_bytes(4096)))  # no header
    buf = bytearray(L.segment_bytes(4096))
    Ring(buf, init=True, alignment=64)
    again = Ring(buf)
    assert again.capacity == 4096 and again.alignment == 64


# -- waiting between threads: no lost wake-ups -----------------------------------------------
class CountingSignal(ThreadSignal):
    def __init__(self):
        super().__init__()
        self.timeouts = 0

    def wait(self, timeout):
        ok = super().wait(timeout)
        self.timeouts += not ok
        return ok


def test_ping_pong_between_threads_never_loses_a_wakeup():
    """With no spinning every wait goes to sleep; a lost wake-up would show as a timed-out sleep."""
    rounds = 2000
    a_buf, b_buf = bytearray(L.segment_bytes(4096)), bytearray(L.segment_bytes(4096))
    a, b = Ring(a_buf, init=True), Ring(b_buf, init=True)
    a_data, a_space, b_data, b_space = (CountingSignal() for _ in range(4))
    slow = dict(spin_us=0, tick_s=30.0)
    wa = Writer(a, wait=SpinThenBlock(a_space, **slow), wake=a_data)
    ra = Reader(a, wait=SpinThenBlock(a_data, **slow), wake=a_space)
    wb = Writer(b, wait=SpinThenBlock(b_space, **slow), wake=b_data)
    rb = Reader(b, wait=SpinThenBlock(b_data, **slow), wake=b_space)

    def echo():
        for _ in range(rounds):
            wb.write(ra.read(timeout=60))

    t = threading.Thread(target=echo)
    t.start()
    for i in range(rounds):
        wa.write(i.to_bytes(4, "little"))
        assert rb.read(timeout=60) == i.to_bytes(4, "little")
    t.join()
    assert a_data.timeouts == b_data.timeouts == 0


def test_reader_group_sleeps_on_one_doorbell():
    bell = CountingSignal()
    rings = [Ring(bytearray(L.segment_bytes(4096)), init=True) for _ in range(3)]
    writers = [Writer(g, wake=bell) for g in rings]
    group = ReaderGroup([Reader(g) for g in rings], bell, spin_us=0)
    group.wait_strategy.tick_s = 30.0
    got = []

    def produce():
        for i in range(300):
            writers[i % 3].write(bytes([i % 256]))

    t = threading.Thread(target=produce)
    t.start()
    while len(got) < 300:
        group.drain(lambda ty, v: got.append(bytes(v)))
        if len(got) < 300:
            assert group.wait(timeout=30)
    t.join()
    assert sorted(got) == sorted(bytes([i % 256]) for i in range(300))
    assert bell.timeouts == 0
    assert group.wait(timeout=0.01) is False
