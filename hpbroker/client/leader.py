"""``LeaderSearch``: when a Producer given several brokers asks which one leads.

A ``NOT_LEADER`` reply, a request nobody answered (``REQUEST_TIMED_OUT``,
``BROKER_SHUTTING_DOWN``) or the first metadata lookup makes the question
*wanted*.  It goes out (to every bootstrap broker at once,
``Transport.discover``) unless one is already *asking* or a search that
found no leader was less than ``backoff`` seconds ago.  While it is out the
producer holds its batches; once answered they go to the leader found.  With
no leader, the search is wanted again after ``backoff`` while anything still
waits (docs/client.md, "Several brokers: following a failover").

No sockets and no clock: ``now`` is passed in (tests/test_client_leader.py).
"""

from __future__ import annotations


class LeaderSearch:
    def __init__(self, backoff: float):
        self.backoff = backoff
        self.wanted = False
        self.asking = False
        self.not_before = 0.0

    def want(self) -> None:
        self.wanted = True

    def start(self, now: float) -> bool:
        """True when the question should go out now (it is then asking)."""
        if not self.wanted or self.asking or now < self.not_before:
            return False
        self.wanted = False
        self.asking = True
        return True

    def found(self) -> None:
        self.asking = False

    def none_found(self, now: float, still_waiting: bool) -> None:
        """No broker leads: ask again ``backoff`` from ``now`` if anything waits."""
        self.asking = False
        self.not_before = now + self.backoff
        self.wanted = still_waiting

    def due(self) -> float | None:
        """When a wanted search may start, or None when none is wanted (or one is out)."""
        return self.not_before if self.wanted and not self.asking else None
