"""The sockets of an acceptor, and how its process opens them.

====================  ======  ==============================================
socket                type    job
====================  ======  ==============================================
client                ROUTER  requests from producers and consumers (tcp)
completions           PULL    writers' group-commit results and watermarks
control               DEALER  hello, topic creation and promotion requests
                              to the supervisor
view                  SUB     cluster view (acceptors, topics) from the
                              supervisor
replica_state         SUB     the replicator's in-sync slaves and replicated
                              offsets (connected on replicated brokers)
slave_acks            PULL    slave writers' reports of each flush (tcp;
                              replicated brokers only, else None)
====================  ======  ==============================================

With ``[security] curve`` on, the two tcp sockets are CURVE servers (ZAP
domains ``hpbroker.client`` and ``hpbroker.replication``) and ``security``
holds the process's ZAP handler, closed before the context goes.

:func:`open_sockets` makes them all with :func:`hpbroker.sockets.make_socket`
(``LINGER`` 0); a test makes its own (inproc) and passes them to
:class:`hpbroker.net.acceptor.Acceptor` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq

from hpbroker import config as config_mod
from hpbroker.net.produce import frame_cutoff
from hpbroker.security import CLIENT, REPLICATION, BrokerSecurity
from hpbroker.sockets import make_socket


@dataclass
class AcceptorSockets:
    ctx: zmq.Context  # the context they live in (the promotion probe opens a short-lived socket in it)
    client: zmq.Socket
    completions: zmq.Socket
    control: zmq.Socket
    view: zmq.Socket
    replica_state: zmq.Socket
    slave_acks: zmq.Socket | None = None
    security: BrokerSecurity | None = None  # CURVE keys, ZAP handler and ACL (None: a test's inproc sockets)


def open_sockets(ctx: zmq.Context, index: int, cfg: config_mod.Config, endpoint: str, completions_ep: str,
                 control_ep: str, view_ep: str, repl_state_ep: str = "") -> AcceptorSockets:
    """Acceptor ``index``'s sockets: the client ROUTER bound to ``endpoint``,
    the completions PULL to ``completions_ep``, the rest connected."""
    b, r = cfg.broker, cfg.replication
    sec = BrokerSecurity(cfg.security, ctx)
    s = AcceptorSockets(
        ctx=ctx,
        # ROUTER_MANDATORY stays 0 (libzmq's default): a reply to a client that is gone is dropped
        client=make_socket(ctx, zmq.ROUTER, maxmsgsize=frame_cutoff(b.max_request_bytes), sndhwm=b.zmq_hwm,
                           rcvhwm=b.zmq_hwm, bind=endpoint, curve=sec.server(CLIENT)),
        completions=make_socket(ctx, zmq.PULL, bind=completions_ep),
        control=make_socket(ctx, zmq.DEALER, connect=control_ep),
        view=make_socket(ctx, zmq.SUB, subscribe=b"", connect=view_ep),
        replica_state=make_socket(ctx, zmq.SUB, subscribe=b"", connect=repl_state_ep or ()),
        security=sec,
    )
    if r.role != "standalone":
        port = r.acceptor_ack_port
        s.slave_acks = make_socket(ctx, zmq.PULL, maxmsgsize=1 << 20, curve=sec.server(REPLICATION),
                                   bind=f"tcp://{b.bind}:{port + index if port else '*'}")
    return s
