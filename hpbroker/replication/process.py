"""Entry point of the replicator process (spawned by the supervisor when
``replication.role`` is master or slave, and again at promotion)."""

from __future__ import annotations

import json
import os
import signal

import zmq

from hpbroker.procutil import child_setup, freeze_heap
from hpbroker.ipc import control
from hpbroker.security import BrokerSecurity
from hpbroker.sockets import make_socket


def main(role: str, cfg_bytes: bytes, instance: str, epoch: int, ring_names: list[str], feed_ep: str,
         completions_ep: str, state_ep: str, control_ep: str, cpus: list[int] | None,
         reigns: list[int] | None = None) -> None:
    cfg = child_setup(f"replicator({role})", cfg_bytes, cpus)
    ctx = zmq.Context()
    ctl = make_socket(ctx, zmq.DEALER, linger_ms=1000, connect=control_ep)
    sec = BrokerSecurity(cfg.security, ctx)  # [security]: CURVE on the sockets to slaves or to the master
    data_dir = cfg.broker.data_dir
    if role == "master":
        from hpbroker.replication.master import Master

        node = Master(cfg, ctx, data_dir, epoch, feed_ep, completions_ep, state_ep,
                      topics=lambda: _topics(data_dir), reigns=reigns or [], security=sec)
        endpoints = node.endpoints
    else:
        from hpbroker.replication.slave import open_slave

        node = open_slave(cfg, ctx, data_dir, instance, ring_names, completions_ep, state_ep, control_ep, max_epoch=epoch,
                          curve=sec.to_master())
        endpoints = []

    def on_term(signum, frame):
        node.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        ctl.send(control.encoder.encode(control.ReplicatorReady(pid=os.getpid(), endpoints=endpoints)))
        freeze_heap()
        node.run()
    finally:
        if hasattr(node, "close"):
            node.close()
        sec.close()
        ctx.destroy(linger=0)


def _topics(data_dir: str) -> dict[str, int]:
    """The topic registry the supervisor keeps (read-only here)."""
    try:
        with open(os.path.join(data_dir, "topics.json")) as f:
            return {str(k): int(v) for k, v in json.load(f).items()}
    except FileNotFoundError:
        return {}
