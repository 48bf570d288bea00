"""One side (producer or consumer) of a ring: its pid, heartbeat and state, and how it judges the peer."""

from __future__ import annotations

from hpbroker.ring import layout as L
from hpbroker.ring.errors import PeerDead, RingClosed
from hpbroker.ring.liveness import is_alive, now_ns, start_time

import os

_FIELDS = {
    "producer": (L.PRODUCER_PID_OFF, L.PRODUCER_START_OFF, L.PRODUCER_HEARTBEAT_OFF, L.PRODUCER_STATE_OFF),
    "consumer": (L.CONSUMER_PID_OFF, L.CONSUMER_START_OFF, L.CONSUMER_HEARTBEAT_OFF, L.CONSUMER_STATE_OFF),
}
_PEER = {"producer": "consumer", "consumer": "producer"}


class Side:
    """Stamps this side's slots in the header and watches the other side's.

    ``dead_after`` (seconds) is how old the peer's heartbeat may get; None
    judges the peer by its pid alone (for peers that are not heartbeating,
    e.g. tests over a bytearray).
    """

    def __init__(self, ring, role: str, dead_after: float | None = None) -> None:
        self.ring = ring
        self.role = role
        self.dead_after_ns = None if dead_after is None else int(dead_after * 1e9)
        self._pid_w, self._start_w, self._hb_w, self._state_w = map(L.word, _FIELDS[role])
        self._ppid_w, self._pstart_w, self._phb_w, self._pstate_w = map(L.word, _FIELDS[_PEER[role]])
        pid = os.getpid()
        hq = ring.hq
        hq[self._hb_w] = now_ns()
        hq[self._pid_w] = pid
        hq[self._start_w] = start_time(pid)
        hq[self._state_w] = L.STATE_ATTACHED

    def heartbeat(self) -> None:
        self.ring.hq[self._hb_w] = now_ns()

    def mark_closed(self) -> None:
        self.ring.hq[self._state_w] = L.STATE_CLOSED

    def peer_state(self) -> str:
        """'none' (never attached), 'alive', 'closed' or 'dead'."""
        hq = self.ring.hq
        state = hq[self._pstate_w]
        if state == L.STATE_NONE:
            return "none"
        if state == L.STATE_CLOSED:
            return "closed"
        if not is_alive(hq[self._ppid_w], hq[self._pstart_w]):
            return "dead"
        if self.dead_after_ns is not None and now_ns() - hq[self._phb_w] > self.dead_after_ns:
            return "dead"
        return "alive"

    def check_peer(self) -> None:
        """Stamp our heartbeat; raise PeerDead / RingClosed if the peer is gone."""
        self.heartbeat()
        state = self.peer_state()
        if state == "dead":
            hq = self.ring.hq
            raise PeerDead(f"ring {_PEER[self.role]} (pid {hq[self._ppid_w]}) is dead")
        if state == "closed":
            raise RingClosed(f"ring {_PEER[self.role]} closed the ring")
