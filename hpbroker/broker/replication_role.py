"""A broker's replication role: the role it starts in, and promotion.

:class:`~hpbroker.broker.supervisor.Supervisor` inherits this part.  At
start, the role is the flags' unless this broker was promoted and its old
master is not back as one (:mod:`hpbroker.broker.role`); a master or slave
runs the replicator process.  ``promote`` turns a slave into a master: the
replicator stops, a new leader epoch is taken and recorded, the writers
open their PUB sockets (SIGUSR2) and a master's replicator starts.
"""

from __future__ import annotations

import logging
import os
import signal

import zmq

from hpbroker.broker import role as role_mod
from hpbroker.broker import state as broker_state
from hpbroker.broker.host import replica_ring_name
from hpbroker.ipc import control
from hpbroker.protocol.errors import ErrorCode
from hpbroker.replication import probe
from hpbroker.replication import process as replicator_mod
from hpbroker.security import BrokerSecurity

log = logging.getLogger("hpbroker.supervisor")


class ReplicationRole:
    """The Supervisor's role and promotion (it provides ``cfg``, ``data_dir``,
    ``role``, ``epoch``, ``reigns``, ``children``, ``mp``, ``cfg_bytes``,
    ``_spawn``, ``_await``, ``_ipc`` and ``publish_view``)."""

    def _choose_role(self) -> None:
        """The flags' role, or master if this broker was promoted and its
        old master is not back as one (hpbroker.broker.role)."""
        r = self.cfg.replication
        promoted_from = broker_state.load_promoted_from(self.data_dir)

        def master_answering() -> str | None:
            ctx = zmq.Context()
            try:
                rep = probe.master_answering(ctx, r.master, r.promote_probe_ms, self.cfg.broker.broker_id,
                                             curve=BrokerSecurity(self.cfg.security, ctx).to_master())
            finally:
                ctx.term()
            return None if rep is None else f"broker {rep.broker_id}, epoch {rep.leader_epoch}"

        start = role_mod.start_role(self.role, r.master, promoted_from, r.keep_promotion, master_answering)
        if start.why:
            log.warning("%s", start.why)
        if start.forget:
            broker_state.save_epoch(self.data_dir, broker_state.load_epoch(self.data_dir), promoted_from=None)
        self.promoted_from = "" if start.forget else (promoted_from or "")
        self.role = start.role
        self.leader_id = self.cfg.broker.broker_id if self.role != "slave" else -1

    def _pub_bind(self, w: int) -> str:
        port = self.cfg.replication.pub_port
        return f"tcp://{self.cfg.broker.bind}:{port + w if port else '*'}"

    def _start_replicator(self, role: str) -> None:
        self.replication_endpoints = None
        self._spawn(self.mp, "replicator", replicator_mod.main,
                    (role, self.cfg_bytes, self.instance, self.epoch,
                     [replica_ring_name(w) for w in range(self.cfg.broker.writers)], self._ipc("repl-feed"),
                     self._ipc("repl-comp"), self._ipc("repl-state"), self._ipc("control"), None, sorted(self.reigns)))
        self._await(lambda: self.replication_endpoints is not None, "the replicator to start")

    def promote(self, epoch: int | None = None, record: bool = True) -> control.Ack:
        """Slave -> master: stop following, take a new epoch, start publishing.
        ``epoch``: the one claimed in ZooKeeper (cluster mode), else the next
        this broker owns; ``record``: remember the master it followed
        (``promoted_from``, hpbroker.broker.role), which cluster mode does not use."""
        if self.role != "slave":
            return control.Ack(code=ErrorCode.BAD_REQUEST, message=f"this broker is {self.role}, not a slave")
        p = self.children.pop("replicator")
        p.terminate()
        p.join(10)
        if p.exitcode is None:
            p.kill()
            p.join(5)
        self.epoch = epoch or broker_state.next_epoch(max(self.epoch, broker_state.max_partition_epoch(self.data_dir)),
                                                      self.cfg.broker.broker_id)
        self.reigns.add(self.epoch)
        # recorded: a restart with this slave's flags keeps it master (hpbroker.broker.role)
        broker_state.save_epoch(self.data_dir, self.epoch, self.reigns,
                                promoted_from=self.cfg.replication.master if record else None)
        self.promoted_from = self.cfg.replication.master if record else ""
        self.role = "master"
        self.leader_id = self.cfg.broker.broker_id
        self.pub_endpoints = [""] * self.cfg.broker.writers
        for name, child in self.children.items():
            if name.startswith("writer"):
                os.kill(child.pid, signal.SIGUSR2)  # bind a PUB socket and publish each round
        self._start_replicator("master")
        self._await(lambda: all(self.pub_endpoints), "the writers to open their replication PUB sockets")
        self.publish_view()
        log.warning("promoted to master with leader epoch %d", self.epoch)
        return control.Ack(code=0, message="", epoch=self.epoch)
