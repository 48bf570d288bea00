"""What an acceptor knows about replication, and the acks=all it holds back.

In sync mode a master acknowledges an ``acks=all`` produce only once every
in-sync slave has made the batch durable.  The replicator publishes, on
every change, how many slaves are in sync and up to which offset each
partition is replicated; this object turns that into released or failed
requests.  No sockets here.
"""

from __future__ import annotations

from hpbroker.protocol.errors import BrokerError, ErrorCode


class ReplicaView:
    def __init__(self, rcfg):
        self.mode = rcfg.mode
        self.min_insync = rcfg.min_insync_replicas
        self.insync = 0
        self.replicated: dict[str, int] = {}
        self.stats: dict = {"replication_role": rcfg.role}
        self._held: dict[str, list] = {}

    @property
    def waiting(self) -> bool:
        return any(self._held.values())

    def sync(self, role: str) -> bool:
        """Does acks=all wait for replicas here?"""
        return role == "master" and self.mode == "sync"

    def check_enough(self) -> None:
        if 1 + self.insync < self.min_insync:
            raise BrokerError(
                ErrorCode.NOT_ENOUGH_REPLICAS,
                f"{1 + self.insync} replica(s) in sync (master included), min_insync_replicas is {self.min_insync}; "
                "acks=all cannot be honoured (acks=1 still works)",
            )

    def hold(self, w) -> bool:
        """Keep ``w`` until the slave has it; False when it already has."""
        if self.replicated.get(w.key, 0) > w.last:
            return False
        self._held.setdefault(w.key, []).append(w)
        return True

    def update(self, state) -> tuple[list, list]:
        """-> (released, failed) after a replicator state message."""
        self.insync = state.insync
        self.replicated = state.replicated
        if state.stats is not None:
            self.stats = dict(state.stats)
        released, failed = [], []
        enough = 1 + self.insync >= self.min_insync
        for key, held in self._held.items():
            if not held:
                continue
            if not enough:
                failed += held
                held.clear()
                continue
            upto = self.replicated.get(key, 0)
            keep = []
            for w in held:
                (released if upto > w.last else keep).append(w)
            held[:] = keep
        return released, failed

    def expired(self, now: float) -> list:
        out = []
        for held in self._held.values():
            gone = [w for w in held if w.deadline <= now]
            if gone:
                out += gone
                held[:] = [w for w in held if w.deadline > now]
        return out

    def take_all(self) -> list:
        out = [w for held in self._held.values() for w in held]
        self._held.clear()
        return out
