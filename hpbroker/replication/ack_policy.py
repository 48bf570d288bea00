"""What an acceptor knows about replication, and the acks=all it holds back.

In sync mode a master acknowledges an ``acks=all`` produce only once every
in-sync slave has made the batch durable.  The replicator publishes, on
every change, which slaves are in sync and up to which offset each
partition is replicated; this object turns that into released or failed
requests.  The slaves' writers also report each flush straight to the
acceptors (:meth:`direct_ack`), which releases a request without waiting
for the two replicators to pass the news on; such a report counts only from
a slave the replicator calls in sync, for the current leader epoch.  Both
sources only ever say what a slave holds, so the larger of the two is used.
No sockets here.
"""

from __future__ import annotations

from hpbroker.protocol.errors import BrokerError, ErrorCode


class AckPolicy:
    def __init__(self, rcfg):
        self.mode = rcfg.mode
        self.min_insync = rcfg.min_insync_replicas
        self.insync = 0
        self.replicated: dict[str, int] = {}
        self.stats: dict = {}  # the replicator's, from its first broadcast on
        self.insync_ids: list[int] = []
        self.direct: dict[int, dict[str, int]] = {}  # slave id -> what its writers reported durable
        self.direct_acks = 0  # reports counted
        self.direct_refused = 0  # reports from a slave not in sync, or for another epoch
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
        """Keep ``w`` until the slave has it; False when it already has, or
        when no slave is in sync: admit() let it in, so min_insync_replicas
        is 1 and the master alone is every replica in sync (Kafka's acks=all
        with an ISR of the leader only)."""
        if (self.insync == 0 and self.min_insync <= 1) or self.replicated.get(w.key, 0) > w.last:
            return False
        self._held.setdefault(w.key, []).append(w)
        return True

    def _direct_min(self, key: str) -> int:
        """What every in-sync slave reported durable for ``key`` itself (0 if any did not)."""
        if not self.insync_ids:
            return 0
        return min(self.direct.get(i, {}).get(key, 0) for i in self.insync_ids)

    def direct_ack(self, slave_id: int, epoch: int, durable: dict[str, int], leader_epoch: int) -> list:
        """A slave's writer reported a flush; -> the requests that releases."""
        if slave_id not in self.insync_ids or epoch != leader_epoch:
            self.direct_refused += 1
            return []
        self.direct_acks += 1
        self.direct.setdefault(slave_id, {}).update(durable)
        if 1 + self.insync < self.min_insync:
            return []  # the replicator's next state fails them
        released = []
        for key in durable:
            upto = self._direct_min(key)
            if upto > self.replicated.get(key, 0):
                self.replicated[key] = upto
                self._release(key, released)
        return released

    def _release(self, key: str, released: list) -> None:
        """Move the requests of ``key`` that its replicated offset covers to ``released``."""
        held = self._held.get(key)
        if held:
            upto = self.replicated.get(key, 0)
            keep = []
            for w in held:
                (released if upto > w.last else keep).append(w)
            held[:] = keep

    def update(self, state) -> tuple[list, list]:
        """-> (released, failed) after a replicator state message."""
        self.insync = state.insync
        self.insync_ids = list(state.insync_ids)
        self.replicated = dict(state.replicated)
        for key in {k for d in self.direct.values() for k in d}:
            upto = self._direct_min(key)
            if upto > self.replicated.get(key, 0):
                self.replicated[key] = upto  # the writers' reports can be ahead of the replicator's view
        if state.stats is not None:
            self.stats = dict(state.stats)
        released, failed = [], []
        enough = 1 + self.insync >= self.min_insync
        for key, held in self._held.items():
            if not enough:
                failed += held
                held.clear()
            else:
                self._release(key, released)
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
