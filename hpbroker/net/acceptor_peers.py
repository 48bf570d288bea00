"""What an acceptor hears from the broker's other processes, and the time.

:class:`~hpbroker.net.acceptor.Acceptor` inherits this part: writer
completions (acks due, new high watermarks that wake parked fetches), the
replicator's state and slave writers' reports (acks=all released, the
replicated fetch bound moved), the supervisor's cluster view, and each
turn's timeouts (produce acks, groups, transactions, parked fetches).
"""

from __future__ import annotations

from hpbroker.ipc import completions, control
from hpbroker.ipc import replica as ipc_replica
from hpbroker.sockets import drain


class AcceptorPeers:
    """The Acceptor's inbound channels from its peers (it provides the
    sockets, ``acks``, ``fetch``, ``cluster``, ``groups``, ``tx``, ``stats``,
    ``heard_from``, ``_send`` and the fetch methods)."""

    def _drain_completions(self) -> None:
        moved: list[str] = []
        for frame in drain(self.completions, copy=False):
            c = completions.decoder.decode(frame.buffer)
            self.heard_from.add(c.writer)
            self._send(self.acks.on_completions(c.done))
            moved += self.fetch.update(c.hwm, c.log_start)
        if moved:
            self._wake_fetches(moved)

    def _drain_replica_state(self) -> None:
        for raw in drain(self.repl_sub):
            replies = self.acks.on_replica_state(ipc_replica.state_decoder.decode(raw))
            self._bound_fetches()
            self._send(replies)

    def _drain_slave_acks(self) -> None:
        """A slave's writer made a flush durable: release what that covers."""
        for raw in drain(self.slave_acks):
            view = self.cluster.view
            self._send(self.acks.on_slave_ack(raw, view.role, view.leader_epoch))
            self._bound_fetches()  # a no-op after a refused report: nothing it reads changed

    def _drain_view(self) -> None:
        for raw in drain(self.view_sub):
            v = control.from_supervisor.decode(raw)
            if isinstance(v, control.ClusterView):
                self.cluster.view = v
                self._bound_fetches()  # a promotion makes this a master's acceptor

    def _expire(self, now: float) -> None:
        self._send(self.acks.tick(now))
        self.groups.tick(now)
        self.tx.tick(now)
        self.stats.tick(now, self.acks.__len__, self.fetch.parked_count)
        for p in self.fetch.timed_out(now):
            self._serve_fetch(p.ident, p.req)
