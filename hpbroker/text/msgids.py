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
    def __init__(self, broker_id: int, wall=time.time):
        if not 0 <= broker_id < 1024:
            raise ValueError("broker_id must be 0..1023")
        self._node = broker_id << SEQ_BITS
        self._wall = wall
        self._ms = -1  # the millisecond the next id belongs to
        self._seq = 0  # its next sequence number

    def _clock(self) -> None:
        ms = int(self._wall() * 1000) - EPOCH_MS
        if ms > self._ms:
            self._ms = ms
            self._seq = 0

    def take(self, n: int) -> np.ndarray:
        """``n`` new ids, ascending, as an int64 array."""
        self._clock()
        k = np.arange(self._seq, self._seq + n, dtype=np.int64)
        ms = self._ms + (k >> SEQ_BITS)
        ids = (ms << 22) | self._node | (k & (SEQ - 1))
        end = self._seq + n
        self._ms += end >> SEQ_BITS
        self._seq = end & (SEQ - 1)
        return ids

    def block(self, n: int) -> int:
        """The first of ``n`` (at most 4096) consecutive ids, all in one
        millisecond (its sequence numbers never carry into the broker id):
        a block that does not fit what is left of the current millisecond
        starts at the next one."""
        if not 0 < n <= SEQ:
            raise ValueError(f"a block is 1..{SEQ} ids, not {n}")
        self._clock()
        if self._seq + n > SEQ:
            self._ms += 1
            self._seq = 0
        first = (self._ms << 22) | self._node | self._seq
        self._seq += n
        if self._seq == SEQ:
            self._ms += 1
            self._seq = 0
        return first

    def next(self) -> int:
        return self.block(1)


def timestamp_ms(msg_id: int) -> int:
    """The wall-clock time (ms since the Unix epoch) a snowflake id was taken at."""
    return (msg_id >> 22) + EPOCH_MS
