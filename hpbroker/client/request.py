"""One synchronous request to one broker endpoint, with a deadline.

For admin tools (stats, promote) that send a single request and exit; the
long-lived Producer/Consumer have their own I/O thread.
"""

from __future__ import annotations

import itertools

import zmq

from hpbroker.protocol import codec
from hpbroker.protocol.errors import BrokerError, ErrorCode

_ids = itertools.count(1)


def request(url: str, make, timeout_ms: int = 5000):
    """Send ``make(id)`` to ``url`` and return the decoded reply; a reply
    with a non-zero code raises BrokerError, as does no reply in time."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IMMEDIATE, 1)
    try:
        s.connect(url)
        req = make(next(_ids))
        s.send_multipart(codec.encode_request(req))
        if not s.poll(timeout_ms):
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, f"no answer from {url} within {timeout_ms} ms")
        rep, _ = codec.decode_reply(s.recv_multipart())
    finally:
        s.close(0)
    if rep.code:
        raise BrokerError(rep.code, rep.message)
    return rep
