"""One synchronous request to one broker endpoint, with a deadline.

For admin tools (stats, promote) that send a single request and exit; the
long-lived Producer/Consumer have their own I/O thread.
"""

from __future__ import annotations

import itertools

import zmq

from hpbroker.protocol import codec
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.client.curve import client_curve
from hpbroker.sockets import make_socket

_ids = itertools.count(1)


def request(url: str, make, timeout_ms: int = 5000, connect_timeout_ms: int | None = None, *,
            curve_secret_key_file: str | None = None, broker_public_key: str | bytes | None = None):
    """Send ``make(id)`` to ``url`` and return the decoded reply; a reply
    with a non-zero code raises BrokerError, as does no connection within
    ``connect_timeout_ms`` (default: ``timeout_ms``) or no reply within
    ``timeout_ms`` after the request went out.  With CURVE
    (``curve_secret_key_file`` and ``broker_public_key``) a refused
    handshake is a connection that never comes: the timeout's message says
    so."""
    curve = client_curve(curve_secret_key_file, broker_public_key)
    ctx = zmq.Context.instance()
    # IMMEDIATE: queue nothing for a broker that is not there...
    s = make_socket(ctx, zmq.DEALER, options={zmq.IMMEDIATE: 1}, curve=curve)
    try:
        s.connect(url)
        wait = timeout_ms if connect_timeout_ms is None else connect_timeout_ms
        if not s.poll(wait, zmq.POLLOUT):  # ...so a send would block for ever: wait for the connection first
            why = " (with CURVE: is this key authorized there, and the broker key right?)" if curve else ""
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"no connection to {url} within {wait} ms{why}")
        req = make(next(_ids))
        s.send_multipart(codec.encode_request(req), zmq.NOBLOCK)
        if not s.poll(timeout_ms):
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"no answer from {url} within {timeout_ms} ms")
        rep, _ = codec.decode_reply(s.recv_multipart())
    finally:
        s.close(0)
    if rep.code:
        raise BrokerError(rep.code, rep.message)
    return rep
