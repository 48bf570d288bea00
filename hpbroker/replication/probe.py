"""Does a broker answer as a master?  One metadata request with a deadline.

Asked before a promotion (would it make two masters?) and when a promoted
broker restarts with its old slave flags (is its old master back?).  A
broker that is gone, hung or cut off does not answer within the deadline,
and is not told apart from a dead one: the check catches a master that is
plainly up, not a network partition.
"""

from __future__ import annotations

import zmq

from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.sockets import Curve, make_socket


def master_answering(ctx: zmq.Context, url: str, timeout_ms: int, own_id: int,
                     curve: Curve | None = None) -> m.MetadataReply | None:
    """The metadata of the broker at ``url`` if it answers within
    ``timeout_ms`` as a master other than broker ``own_id``; else None
    (at once with ``timeout_ms`` 0: asking is switched off).  ``curve``:
    this broker's CURVE client options for the master ([security])."""
    if timeout_ms <= 0:
        return None
    try:
        s = make_socket(ctx, zmq.DEALER, connect=url, curve=curve)  # not IMMEDIATE: the request waits in the pipe for the connection
    except zmq.ZMQError:
        return None  # a URL ZeroMQ cannot connect to answers nothing
    try:
        s.send_multipart(codec.encode_request(m.Metadata(id=1, topics=[])), zmq.NOBLOCK)
        if not s.poll(timeout_ms):
            return None  # silent: gone, hung or unreachable
        rep, _ = codec.decode_reply(s.recv_multipart())
    except Exception:  # noqa: BLE001 - an answer we cannot read is not a live master's
        return None
    finally:
        s.close(0)
    if isinstance(rep, m.MetadataReply) and rep.role == "master" and rep.broker_id != own_id:
        return rep
    return None
