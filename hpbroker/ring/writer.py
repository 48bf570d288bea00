"""The producer side of a ring: claim/commit/abort in place, write, and batch publish.

Every publication follows the protocol in :mod:`hpbroker.ring.ring`:
payload first, then zero the word after the new record(s), then the record
word of the first new record as one aligned 8-byte store, then ``tail``,
then (after a full fence) wake the consumer if its waiting flag is set.
"""

from __future__ import annotations

from hpbroker.ring import layout as L
from hpbroker.ring.errors import RingError, RingFull
from hpbroker.ring.side import Side
from hpbroker.ring.wait import SpinThenBlock, ThreadSignal, full_fence

__all__ = ["Writer"]

_PAD = L.PADDING_WORD_TYPE
_TAIL_W = L.word(L.TAIL_OFF)
_HEAD_W = L.word(L.HEAD_OFF)
_CWAIT_W = L.word(L.CONSUMER_WAITING_OFF)
_PWAIT_W = L.word(L.PRODUCER_WAITING_OFF)
_MAX_TYPE = L.MAX_TYPE_ID
# record word fields (layout.py), as module constants: as cheap as literals in the loops
_HDR = L.RECORD_HEADER_BYTES  # the payload's offset in its record
_WS = L.WORD_SHIFT  # byte index >> _WS = index into dq
_TS = L.TYPE_SHIFT  # record word >> _TS = type (unsigned)
_PAD_T = L.PADDING_TYPE_U32


class Writer:
    """The single producer of a ring.

    ``wait`` is the strategy used while the ring is full (it sleeps on the
    "space" signal the consumer posts); ``wake`` is the signal posted when
    the consumer is asleep (its doorbell).  ``full_timeout`` (seconds) is how
    long a write waits for space before raising :class:`RingFull`.
    """

    def __init__(self, ring, *, wait=None, wake=None, full_timeout: float = 1.0, dead_after: float | None = None):
        self.ring = ring
        self.side = Side(ring, "producer", dead_after)
        self.wait_strategy = wait if wait is not None else SpinThenBlock(ThreadSignal())
        self.wake_signal = wake
        self.full_timeout = full_timeout
        self._cap = ring.capacity
        self._mask = ring.mask
        self._amask = ring.alignment - 1
        self._max_record = ring.max_record
        self._hq = ring.hq
        self._dq = ring.dq
        self._dv = ring.data
        self._claim = None  # (pad_index, pad, index, tail_after_pad, capacity_of_claim)
        self._head = ring.hq[_HEAD_W]
        self._tail = self._recover_tail()

    # -- positions ---------------------------------------------------------------
    def _recover_tail(self) -> int:
        """Resume after the last published record (a previous producer may have died
        between publishing a record word and storing ``tail``)."""
        hq, dq, mask, cap = self._hq, self._dq, self._mask, self._cap
        head = hq[_HEAD_W]
        tail = max(hq[_TAIL_W], head)
        while tail - head < cap:
            w = dq[(tail & mask) >> _WS]
            n = L.word_length(w)
            if n <= 0:
                break
            tail += n if w >> _TS == _PAD_T else (n + self._amask) & ~self._amask
        hq[_TAIL_W] = tail
        return tail

    @property
    def position(self) -> int:
        """Bytes published so far (the producer position)."""
        return self._tail

    def free_bytes(self) -> int:
        return self._cap - (self._tail - self._hq[_HEAD_W])

    # -- waiting -------------------------------------------------------------------
    def _await_space(self, end: int, timeout: float | None) -> None:
        """Wait until position ``end`` is within one capacity of ``head``."""
        hq, cap = self._hq, self._cap

        def ready():
            self._head = hq[_HEAD_W]
            return end - self._head <= cap

        def arm():
            hq[_PWAIT_W] = 1

        def disarm():
            hq[_PWAIT_W] = 0

        t = self.full_timeout if timeout is None else timeout
        if not self.wait_strategy.wait(ready, arm, disarm, self.side.check_peer, t):
            raise RingFull(
                f"ring full: {end - self._tail} bytes needed, "
                f"{cap - (self._tail - self._head)} free after {t:.3f}s"
            )

    def _wake(self) -> None:
        full_fence()
        hq = self._hq
        if hq[_CWAIT_W]:
            hq[_CWAIT_W] = 0
            if self.wake_signal is not None:
                self.wake_signal.post()

    def _record_bytes(self, n: int) -> int:
        rec = (n + _HDR + self._amask) & ~self._amask
        if rec > self._max_record:
            raise ValueError(f"record of {n} bytes exceeds the ring's max payload {self.ring.max_payload}")
        return rec

    # -- zero-copy -----------------------------------------------------------------
    def claim(self, length: int, type_id: int = 0, timeout: float | None = None) -> memoryview:
        """Reserve space for a ``length``-byte payload and return a writable view of it.

        Fill the view in place, then :meth:`commit` (or :meth:`abort`).  The
        record is invisible to the reader until committed.
        """
        if self._claim is not None:
            raise RingError("a claim is already open; commit or abort it first")
        if not 0 <= type_id <= _MAX_TYPE:
            raise ValueError(f"type_id must be in [0, {_MAX_TYPE}]")
        rec = self._record_bytes(length)
        tail = self._tail
        pad, pos = L.plan(tail, rec, self._cap)
        if pos + rec - self._head > self._cap:
            self._await_space(pos + rec, timeout)
        index = pos & self._mask
        self._claim = (tail & self._mask, pad, index, pos, length, type_id)
        return self._dv[index + _HDR : index + _HDR + length]

    def commit(self, length: int | None = None) -> None:
        """Publish the claimed record; ``length`` may shrink the payload actually written."""
        if self._claim is None:
            raise RingError("no open claim")
        pad_index, pad, index, pos, claimed, type_id = self._claim
        self._claim = None
        if length is None:
            length = claimed
        elif not 0 <= length <= claimed:
            raise ValueError(f"commit length {length} outside the claim of {claimed}")
        end = pos + ((length + _HDR + self._amask) & ~self._amask)
        dq = self._dq
        if end - self._head < self._cap:
            dq[(end & self._mask) >> _WS] = 0
        dq[index >> _WS] = (type_id << _TS) | (length + _HDR)
        if pad:
            dq[pad_index >> _WS] = _PAD | pad
        self._tail = end
        self._hq[_TAIL_W] = end
        self._wake()

    def abort(self) -> None:
        """Give the claimed space back; nothing was published."""
        self._claim = None

    # -- copying convenience ---------------------------------------------------------
    def write(self, data, type_id: int = 0, timeout: float | None = None) -> None:
        """Copy one record in and publish it (waits for space up to the full timeout)."""
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        if not 0 <= type_id <= _MAX_TYPE:
            raise ValueError(f"type_id must be in [0, {_MAX_TYPE}]")
        if self._claim is not None:
            raise RingError("a claim is open; commit or abort it first")
        n = len(data)
        rec = (n + _HDR + self._amask) & ~self._amask
        if rec > self._max_record:
            raise ValueError(f"record of {n} bytes exceeds the ring's max payload {self.ring.max_payload}")
        cap = self._cap
        tail = self._tail
        index = tail & self._mask
        pad = cap - index
        if rec <= pad:
            pad = 0
        else:
            index = 0
        end = tail + pad + rec
        if end - self._head > cap:
            self._await_space(end, timeout)
        self._dv[index + _HDR : index + _HDR + n] = data
        dq = self._dq
        if end - self._head < cap:
            dq[(end & self._mask) >> _WS] = 0
        dq[index >> _WS] = (type_id << _TS) | (n + _HDR)
        if pad:
            dq[(tail & self._mask) >> _WS] = _PAD | pad
        self._tail = end
        self._hq[_TAIL_W] = end
        self._wake()

    def write_many(self, payloads, type_id: int = 0, timeout: float | None = None) -> int:
        """Write a sequence of records with one publication per chunk that fits.

        Returns ``len(payloads)``.  If the ring stays full, :class:`RingFull`
        is raised with ``.written`` = how many leading records were published.

        The record word of the chunk's first record is stored last, so the
        reader sees the whole chunk at once; ``tail`` is stored and the
        consumer woken once per chunk, not per record.
        """
        if not 0 <= type_id <= _MAX_TYPE:
            raise ValueError(f"type_id must be in [0, {_MAX_TYPE}]")
        if self._claim is not None:
            raise RingError("a claim is open; commit or abort it first")
        i, count = 0, len(payloads)
        while i < count:
            j = self._write_chunk(payloads, i, type_id)
            if j == i:  # not even one record fits: wait for room for the next one
                n = len(payloads[i])
                rec = self._record_bytes(n)
                pad, pos = L.plan(self._tail, rec, self._cap)
                try:
                    self._await_space(pos + rec, timeout)
                except RingFull as e:
                    e.written = i
                    raise
            i = j
        return count

    def _write_chunk(self, payloads, i: int, type_id: int) -> int:
        cap, mask, amask, dv, dq = self._cap, self._mask, self._amask, self._dv, self._dq
        maxrec = self._max_record
        tword = type_id << _TS
        self._head = self._hq[_HEAD_W]
        limit = self._head + cap
        tail = self._tail
        first_index = -1
        first_word = 0
        count = len(payloads)
        while i < count:
            p = payloads[i]
            n = len(p)
            rec = (n + _HDR + amask) & ~amask
            if rec > maxrec:
                if first_index < 0:
                    raise ValueError(f"record of {n} bytes exceeds the ring's max payload {self.ring.max_payload}")
                break
            index = tail & mask
            to_end = cap - index
            if rec > to_end:
                if tail + to_end + rec > limit:
                    break
                if first_index < 0:
                    first_index, first_word = index, _PAD | to_end
                else:
                    dq[index >> _WS] = _PAD | to_end
                tail += to_end
                index = 0
            elif tail + rec > limit:
                break
            dv[index + _HDR : index + _HDR + n] = p
            if first_index < 0:
                first_index, first_word = index, tword | (n + _HDR)
            else:
                dq[index >> _WS] = tword | (n + _HDR)
            tail += rec
            i += 1
        if first_index >= 0:
            if tail < limit:
                dq[(tail & mask) >> _WS] = 0
            dq[first_index >> _WS] = first_word
            self._tail = tail
            self._hq[_TAIL_W] = tail
            self._wake()
        return i

    # -- lifecycle -----------------------------------------------------------------
    def heartbeat(self) -> None:
        self.side.heartbeat()

    def close(self) -> None:
        """Mark the producer closed: the reader drains what is left, then gets RingClosed."""
        self._claim = None
        self.side.mark_closed()
        full_fence()
        self._hq[_CWAIT_W] = 0
        if self.wake_signal is not None:
            self.wake_signal.post()
