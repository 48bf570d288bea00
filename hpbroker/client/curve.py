"""A client's CURVE options, and what a refused handshake means (docs/security.md).

A broker with ``[security] curve = true`` takes only CURVE connections from
keys it trusts, and answers a refused one with nothing at all.  The
transport's socket monitor sees the handshake fail; :func:`refusal` says
whether that failure is final (an unknown key: ZAP status 400; CURVE at
one end only: a mechanism mismatch), so the requests waiting on that
broker get NOT_AUTHORIZED at once instead of timing out.
"""

from __future__ import annotations

import zmq

from hpbroker.sockets import Curve

#: monitor events of a connection the broker's security refused (or that speaks another mechanism)
HANDSHAKE_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
#: what the transport's monitor listens for
WATCHED = zmq.EVENT_DISCONNECTED | HANDSHAKE_REFUSED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def client_curve(curve_secret_key_file: str | None, broker_public_key: str | bytes | None) -> Curve | None:
    """A client's CURVE options: its secret certificate (NAME.key_secret)
    and the broker's public key (Z85, or the path of the broker's NAME.key);
    None when neither is given.  ValueError for one without the other, or a
    file that holds no key."""
    if curve_secret_key_file is None and broker_public_key is None:
        return None
    if curve_secret_key_file is None or broker_public_key is None:
        raise ValueError("CURVE needs both curve_secret_key_file (this client's key pair) and broker_public_key")
    return Curve.load(str(curve_secret_key_file), server_key=broker_public_key)


def refusal(ev: dict) -> str | None:
    """Why a monitor event (``recv_monitor_message``) means the broker's
    security turned this client away for good, or None.  A handshake that
    fails with no detail is not final: a wrong broker key looks so, and so
    does a broker dying mid-handshake."""
    e = ev["event"]
    if e == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"CURVE authentication failed (ZAP status {ev['value']}): is this client's public key in its authorized_keys_dir?"
    if e == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and ev["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return ("security mechanism mismatch: CURVE is on at one end only (pass curve_secret_key_file= and "
                "broker_public_key=, or --curve-secret-key-file and --broker-public-key)")
    return None
