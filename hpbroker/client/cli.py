"""Shared bits of the console tools (hpbroker produce/consume/topics)."""

from __future__ import annotations

import os

from hpbroker.protocol.errors import BrokerError, ErrorCode

DEFAULT_URL = "tcp://127.0.0.1:7600"


def add_broker_args(p) -> None:
    p.add_argument("--broker", default=os.environ.get("HPBROKER_URL", DEFAULT_URL),
                   help="bootstrap endpoint, tcp://HOST:PORT (default: $HPBROKER_URL or %(default)s)")
    p.add_argument("--connect-timeout-ms", type=int, default=5000, metavar="MS",
                   help="give up when the broker does not answer the first request within MS (default %(default)s)")


def user_error(e: BrokerError, url: str):
    """A one-line UserError (exit 1) for a BrokerError."""
    from hpbroker.commands import UserError

    if e.code == ErrorCode.REQUEST_TIMED_OUT:
        return UserError(f"no answer from the broker at {url} (is it running and reachable?)", 1)
    return UserError(str(e), 1)
