"""asv suite: the group coordinator's state machine (hpbroker.groups), sans IO.

One group of 100 members subscribed to one topic of 120 partitions, built
and brought to a stable assignment in ``setup`` (every member reporting
what it was told).  ``time_steady_heartbeat`` is the cost the acceptor pays
per heartbeat once nothing moves (the common case: every member, every
``groups.heartbeat_interval_ms``); ``time_join_and_leave`` is one member
joining and leaving again (two target recomputations by the assignor).
No processes, no sockets.  The broker round trip of a rebalance is
``hpbroker-bench groups`` (docs/performance.md, "Consumer groups").
"""

from hpbroker.groups.coordinator import GroupCoordinator
from hpbroker.protocol import messages as m

MEMBERS = 100
PARTITIONS = 120
TOPIC = "t"
GROUP = "g"


def _beat(member_id, epoch, owned, **kw):
    return m.GroupHeartbeat(id=1, group=GROUP, member_id=member_id, member_epoch=epoch, topics=[TOPIC],
                            session_timeout_ms=10_000, owned=owned, **kw)


class CoordinatorHeartbeat:
    params = ["sticky", "range", "roundrobin"]
    param_names = ["assignor"]

    def setup(self, assignor):
        self.now = 1000.0
        self.counts = {TOPIC: PARTITIONS}
        self.c = GroupCoordinator(default_assignor=assignor)
        self.state = {}  # member -> (epoch, owned lists)
        ids = [f"member-{i:03d}" for i in range(MEMBERS)]
        for mid in ids:
            rep = self.c.heartbeat(_beat(mid, m.JOIN, []), self.counts, self.now)
            self.state[mid] = (rep.member_epoch, rep.assignment)
        for _ in range(10):  # report what each was told until nothing changes
            changed = False
            for mid in ids:
                epoch, owned = self.state[mid]
                rep = self.c.heartbeat(_beat(mid, epoch, owned), self.counts, self.now)
                if (rep.member_epoch, rep.assignment) != (epoch, owned):
                    changed = True
                self.state[mid] = (rep.member_epoch, rep.assignment)
            if not changed:
                break
        g = self.c.groups[GROUP]
        if g.state() != "stable" or sum(len(tp.partitions) for _, o in self.state.values() for tp in o) != PARTITIONS:
            raise RuntimeError(f"the group did not settle: {g.state()}")
        self.reqs = [_beat(mid, *self.state[mid]) for mid in ids]
        self.i = 0

    def time_steady_heartbeat(self, assignor):
        self.i = (self.i + 1) % MEMBERS
        self.c.heartbeat(self.reqs[self.i], self.counts, self.now)

    def time_join_and_leave(self, assignor):
        self.c.heartbeat(_beat("newcomer", m.JOIN, []), self.counts, self.now)
        self.c.heartbeat(_beat("newcomer", m.LEAVE, []), self.counts, self.now)

    def track_steady_heartbeats_per_s(self, assignor):
        import time

        n = 20_000
        t = time.perf_counter()
        for i in range(n):
            self.c.heartbeat(self.reqs[i % MEMBERS], self.counts, self.now)
        return n / (time.perf_counter() - t)

    track_steady_heartbeats_per_s.unit = "heartbeats/s"
