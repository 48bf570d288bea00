"""What every command that talks to a broker shares: --broker, and one-line errors."""

from __future__ import annotations

import os

from hpbroker.commands import UserError
from hpbroker.protocol.errors import BrokerError, ErrorCode

DEFAULT_URL = "tcp://127.0.0.1:7600"


def add_broker_args(p, several: bool = True) -> None:
    """--broker and --connect-timeout-ms.  ``several``: the command takes a
    list of brokers and uses the one that leads (produce, consume, topics);
    else it talks to exactly the one named (stats, promote)."""
    what = ("bootstrap endpoint(s), tcp://HOST:PORT[,tcp://HOST:PORT...]: the master is found among them" if several
            else "the broker, tcp://HOST:PORT")
    p.add_argument("--broker", default=os.environ.get("HPBROKER_URL", DEFAULT_URL),
                   help=f"{what} (default: $HPBROKER_URL or %(default)s)")
    p.set_defaults(broker_several=several)
    p.add_argument("--connect-timeout-ms", type=int, default=5000, metavar="MS",
                   help="give up when the broker does not answer the first request within MS (default %(default)s)")


def user_error(e: BrokerError, url: str):
    """A one-line UserError (exit 1) for a BrokerError."""
    if e.code == ErrorCode.REQUEST_TIMED_OUT:
        return UserError(f"no answer from the broker at {url} (is it running and reachable?)", 1)
    return UserError(str(e), 1)


def check_broker_arg(args) -> None:
    """A malformed --broker is one line and exit 2, not a traceback."""
    from hpbroker.client.transport import parse_bootstrap

    try:
        urls = parse_bootstrap(args.broker)
    except ValueError as e:
        raise UserError(f"--broker: {e}", 2) from None
    if len(urls) > 1 and not args.broker_several:
        raise UserError(f"--broker: this command talks to one broker, got {len(urls)}: {args.broker}", 2)
