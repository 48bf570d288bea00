"""The consumer side of a ring: zero-copy views, burst drains, and blocking waits.

A record view handed out by :meth:`Reader.poll`, :meth:`Reader.take` or to
a :meth:`Reader.drain` handler points into the ring itself.  It stays valid
until the record is released (``release()``, or the end of ``drain``); copy
it (``bytes(view)``) to keep it longer.  Releasing zeroes each consumed
record word, then advances ``head`` once, then wakes the producer if it is
asleep waiting for space.
"""

from __future__ import annotations

from hpbroker.ring import layout as L
from hpbroker.ring.errors import RingCorrupt, RingError
from hpbroker.ring.side import Side
from hpbroker.ring.wait import SpinThenBlock, ThreadSignal, full_fence

__all__ = ["Reader"]

_HEAD_W = L.word(L.HEAD_OFF)
_CWAIT_W = L.word(L.CONSUMER_WAITING_OFF)
_PWAIT_W = L.word(L.PRODUCER_WAITING_OFF)
# record word fields (layout.py); the per-record loops copy them into locals,
# which cost what a literal costs (a global costs more)
_HDR = L.RECORD_HEADER_BYTES  # the payload's offset in its record
_WS = L.WORD_SHIFT  # byte index >> _WS = index into dq
_TS = L.TYPE_SHIFT  # record word >> _TS = type (unsigned)
_LEN = L.WORD_LENGTH_MASK
_SIGN = L.INT32_SIGN
_PAD_T = L.PADDING_TYPE_U32
_NEVER = 1 << 62


class Reader:
    """The single consumer of a ring.

    ``wait`` is the strategy used when the ring is empty (it sleeps on the
    doorbell the producer posts); ``wake`` is the "space" signal posted when
    the producer is asleep on a full ring.
    """

    def __init__(self, ring, *, wait=None, wake=None, dead_after: float | None = None):
        self.ring = ring
        self.side = Side(ring, "consumer", dead_after)
        self.wait_strategy = wait if wait is not None else SpinThenBlock(ThreadSignal())
        self.wake_signal = wake
        self._mask = ring.mask
        self._amask = ring.alignment - 1
        self._maxrec = ring.max_record
        self._hq = ring.hq
        self._dq = ring.dq
        self._dv = ring.data
        self._head = ring.hq[_HEAD_W]
        self._pending = []  # record-word indexes handed out and not yet released
        self._pending_end = self._head

    @property
    def position(self) -> int:
        """Bytes consumed so far (the consumer position)."""
        return self._head

    # -- inspection ------------------------------------------------------------------
    def available(self) -> bool:
        """True if a published record (or padding) waits at the consumer position."""
        n = self._dq[(self._pending_end & self._mask) >> _WS] & _LEN
        return 0 < n < _SIGN

    def _corrupt(self, pos: int, word: int):
        return RingCorrupt(f"bad record word {word:#018x} at position {pos}")

    # -- zero-copy, record at a time -------------------------------------------------
    def take(self, limit: int | None = None) -> list[tuple[int, memoryview]]:
        """Up to ``limit`` available records as ``(type_id, view)``, without waiting.

        The views stay valid until :meth:`release`, which frees them all.
        """
        dq, dv, mask, amask, maxrec = self._dq, self._dv, self._mask, self._amask, self._maxrec
        hdr, ws, ts, lmask, pad_t = _HDR, _WS, _TS, _LEN, _PAD_T  # locals: the loop runs per record
        pending = self._pending
        pos = self._pending_end
        out = []
        lim = _NEVER if limit is None else limit
        while len(out) < lim:
            index = pos & mask
            w = dq[index >> ws]
            n = w & lmask
            if not 0 < n <= maxrec:
                if n == 0 or n & _SIGN:
                    break
                raise self._corrupt(pos, w)
            pending.append(index >> ws)
            if w >> ts == pad_t:
                pos += n
                continue
            out.append((w >> ts, dv[index + hdr : index + n]))
            pos += (n + amask) & ~amask
        self._pending_end = pos
        return out

    def poll(self) -> tuple[int, memoryview] | None:
        """The next record as ``(type_id, view)`` or None; call :meth:`release` when done."""
        got = self.take(1)
        return got[0] if got else None

    def release(self) -> None:
        """Free every record handed out by ``poll``/``take``."""
        if not self._pending:
            return
        dq = self._dq
        for w in self._pending:
            dq[w] = 0
        self._pending.clear()
        self._advance(self._pending_end)

    def _advance(self, pos: int) -> None:
        self._head = pos
        hq = self._hq
        hq[_HEAD_W] = pos
        full_fence()
        if hq[_PWAIT_W]:
            hq[_PWAIT_W] = 0
            if self.wake_signal is not None:
                self.wake_signal.post()

    # -- burst -----------------------------------------------------------------------
    def drain(self, handler, limit: int | None = None) -> int:
        """Call ``handler(type_id, view)`` for every available record (up to ``limit``).

        One ``head`` store and at most one wake-up per call, however many
        records.  Each view is valid only inside its handler call.  If the
        handler raises, the records before it are consumed and the failing
        one is not.  Returns the number of records handled; never waits.
        """
        if self._pending:
            raise RingError("release() the records from poll/take before drain()")
        dq, dv, mask, amask, maxrec = self._dq, self._dv, self._mask, self._amask, self._maxrec
        hdr, ws, ts, lmask, pad_t = _HDR, _WS, _TS, _LEN, _PAD_T  # locals: the loop runs per record
        head = pos = self._head
        count = 0
        lim = _NEVER if limit is None else limit
        try:
            while count < lim:
                index = pos & mask
                w = dq[index >> ws]
                n = w & lmask
                if not 0 < n <= maxrec:
                    if n == 0 or n & _SIGN:
                        break
                    raise self._corrupt(pos, w)
                t = w >> ts
                if t == pad_t:
                    dq[index >> ws] = 0
                    pos += n
                    continue
                handler(t, dv[index + hdr : index + n])
                dq[index >> ws] = 0
                pos += (n + amask) & ~amask
                count += 1
        finally:
            if pos != head:
                self._pending_end = pos
                self._advance(pos)
        return count

    # -- blocking --------------------------------------------------------------------
    def arm(self) -> None:
        self._hq[_CWAIT_W] = 1

    def disarm(self) -> None:
        self._hq[_CWAIT_W] = 0

    def check(self) -> None:
        """Stamp our heartbeat; raise PeerDead/RingClosed if the producer is gone and nothing is left.

        The peer is judged first and the ring looked at second: a dead
        producer publishes nothing more, so every record it completed is
        seen (and delivered) before PeerDead is raised.
        """
        side = self.side
        side.heartbeat()
        if side.peer_state() in ("dead", "closed") and not self.available():
            side.check_peer()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a record is available (True) or ``timeout`` seconds pass (False).

        Raises :class:`PeerDead` if the producer died, :class:`RingClosed`
        if it closed, once every record it published has been read.
        """
        return self.wait_strategy.wait(self.available, self.arm, self.disarm, self.check, timeout)

    def receive(self, timeout: float | None = None) -> tuple[int, memoryview] | None:
        """Wait for and return the next record ``(type_id, view)``; :meth:`release` it after use."""
        while True:
            got = self.poll()
            if got is not None:
                return got
            if self._pending:  # only padding was taken
                self.release()
                continue
            if not self.wait(timeout):
                return None

    def read(self, timeout: float | None = None) -> bytes | None:
        """Copying convenience: the next payload as bytes, or None on timeout."""
        got = self.receive(timeout)
        if got is None:
            return None
        data = bytes(got[1])
        self.release()
        return data

    def heartbeat(self) -> None:
        self.side.heartbeat()

    def close(self) -> None:
        self.release()
        self.side.mark_closed()
        full_fence()
        if self._hq[_PWAIT_W] and self.wake_signal is not None:
            self._hq[_PWAIT_W] = 0
            self.wake_signal.post()
