"""Producer ids for idempotent producers: unique without coordination.

An id is a snowflake (MetaQ gave each message such an id), a positive int64:

=======  =====  ===================================================
bits     width  field
=======  =====  ===================================================
62..22   41     milliseconds since 2026-01-01 UTC (69 years of room)
21..12   10     broker id (``broker.broker_id``, unique per cluster)
11..6    6      acceptor index
5..0     6      sequence within the millisecond (64 ids per ms; the
                64th waits for the next millisecond)
=======  =====  ===================================================

So two acceptors, two brokers of a cluster, or two runs of one broker never
hand out the same id, as long as the wall clock does not step back across a
restart by more than the restart took.  Nothing is stored.
"""

from __future__ import annotations

import time

EPOCH_MS = 1767225600000  # 2026-01-01T00:00:00Z


class ProducerIds:
    def __init__(self, broker_id: int, acceptor: int, wall=time.time, sleep=time.sleep):
        if not 0 <= broker_id < 1024 or not 0 <= acceptor < 64:
            raise ValueError("broker_id must be 0..1023 and acceptor 0..63")
        self._node = (broker_id << 12) | (acceptor << 6)
        self._wall = wall
        self._sleep = sleep
        self._last_ms = -1
        self._seq = 0

    def next(self) -> int:
        ms = int(self._wall() * 1000) - EPOCH_MS
        if ms < self._last_ms:
            ms = self._last_ms  # the clock stepped back within this run: keep counting from the last
        if ms == self._last_ms:
            self._seq += 1
            if self._seq == 64:
                while ms <= self._last_ms:
                    self._sleep(0.001)
                    ms = int(self._wall() * 1000) - EPOCH_MS
                self._seq = 0
        else:
            self._seq = 0
        self._last_ms = ms
        return (ms << 22) | self._node | self._seq
