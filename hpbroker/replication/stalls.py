"""Partitions the PUB stream left behind, found from the master's keep-alives.

A PUB message can be lost (the SUB socket's high-water mark, a slow
joiner) with no later message to show the gap: the partition just stops
moving while the master's high watermark moves on.  Every keep-alive
(``Welcome``, about once a second) carries the master's high watermarks.
A partition behind them that has not moved since the previous keep-alive,
with nothing of it on the way to the local writer, is stalled: the message
that would have moved it was lost, and a catch-up read must bring it.

Pure state, no sockets.
"""

from __future__ import annotations


class StallWatch:
    def __init__(self):
        self._behind: dict[str, int] = {}  # partition -> where it stood at the last keep-alive, when behind then

    def keepalive(self, master_hwm: dict[str, int], expected: dict[str, int], inflight: dict[str, int]) -> list[str]:
        """The partitions stalled since the previous keep-alive, given this
        one's high watermarks, the next offset each partition waits for, and
        the ring records of each still in flight."""
        previous, self._behind = self._behind, {}
        stalled = []
        for key, hwm in master_hwm.items():
            at = expected.get(key, 0)
            if at < hwm:
                if previous.get(key) == at and not inflight.get(key):
                    stalled.append(key)
                self._behind[key] = at
        return stalled
