"""MetaQ message ids: snowflakes, handed out in blocks.

MetaQ gave every message a 64-bit id from ``IdWorker`` (``../shared/METAQ.md``
section 1.7); hpbroker's text listener keeps its layout:

=======  =====  =========================================================
bits     width  field
=======  =====  =========================================================
63       1      zero (ids are positive)
62..22   41     milliseconds since MetaQ's epoch, 1303895660503
                (2011-04-27); room until 2081
21..12   10     broker id (``broker.broker_id``)
11..0    12     sequence within the millisecond
=======  =====  =========================================================

A put batch takes a whole block at once: :meth:`MsgIds.block`, up to 4096
consecutive ids in one millisecond, so a batch stores only its first id
(hpbroker/text/records.py); :meth:`MsgIds.take` hands out any number as a
numpy array.  When the current millisecond's 4096 sequence numbers run out
the ids go on in the following milliseconds, ahead of the wall clock if
they must (as a hybrid logical clock does).  So ids never repeat within a run,
and two brokers with different ids never share one.  Across a restart they
stay unique as long as the wall clock has not stepped back by more than
the restart took (and the listener was not running ahead of the clock,
which takes more than 4 million puts a second).  Nothing is stored.
"""

from __future__ import annotations

import time

import numpy as np

EPOCH_MS = 1303895660503
SEQ_BITS = 12
SEQ = 1 << SEQ_BITS


class MsgIds:
    """``lane`` of ``lanes``: several text listener processes of one broker
    each take their own slice of the 4096 sequence numbers of a millisecond
    (``4096 // lanes`` of them), so their ids never meet."""

    def __init__(self, broker_id: int, wall=time.time, lane: int = 0, lanes: int = 1):
        if not 0 <= broker_id < 1024:
            raise ValueError("broker_id must be 0..1023")
        if not 0 <= lane < lanes <= SEQ:
            raise ValueError("lane must be 0..lanes-1")
        self._node = broker_id << SEQ_BITS
        self._wall = wall
        self.span = SEQ // lanes  # sequence numbers this lane has in each millisecond
        self._lo = lane * self.span
        self._ms = -1  # the millisecond the next id belongs to
        self._seq = 0  # its next sequence number (within the lane's slice)

    def _clock(self) -> None:
        ms = int(self._wall() * 1000) - EPOCH_MS
        if ms > self._ms:
            self._ms = ms
            self._seq = 0

    def take(self, n: int) -> np.ndarray:
        """``n`` new ids, ascending, as an int64 array."""
        self._clock()
        k = np.arange(self._seq, self._seq + n, dtype=np.int64)
        ms = self._ms + k // self.span
        ids = (ms << 22) | self._node | (self._lo + k % self.span)
        end = self._seq + n
        self._ms += end // self.span
        self._seq = end % self.span
        return ids

    def block(self, n: int) -> int:
        """The first of ``n`` (at most ``span``: 4096 for one lane)
        consecutive ids, all in one millisecond (the sequence numbers never
        carry into the broker id, nor into another lane's): a block that
        does not fit what is left of the current millisecond starts at the
        next one."""
        if not 0 < n <= self.span:
            raise ValueError(f"a block is 1..{self.span} ids, not {n}")
        self._clock()
        if self._seq + n > self.span:
            self._ms += 1
            self._seq = 0
        first = (self._ms << 22) | self._node | (self._lo + self._seq)
        self._seq += n
        if self._seq == self.span:
            self._ms += 1
            self._seq = 0
        return first

    def next(self) -> int:
        return self.block(1)


def timestamp_ms(msg_id: int) -> int:
    """The wall-clock time (ms since the Unix epoch) a snowflake id was taken at."""
    return (msg_id >> 22) + EPOCH_MS
