"""What every command that talks to a broker shares: --broker, CURVE keys, and one-line errors."""

from __future__ import annotations

import os

from hpbroker.commands import UserError
from hpbroker.protocol.errors import BrokerError, ErrorCode

DEFAULT_URL = "tcp://127.0.0.1:7600"

#: the commands whose --broker may be a cluster's ZooKeeper, zk://HOST:PORT[/chroot] (docs/client.md)
ZK_COMMANDS = ("produce", "consume", "topics", "groups", "stats", "tail", "dlq")


def add_broker_args(p, several: bool = True, cluster: bool = False) -> None:
    """--broker and --connect-timeout-ms.  ``several``: the command takes a
    list of brokers and uses the one that leads (produce, consume, topics);
    else it talks to exactly the one named (stats, promote).  ``cluster``:
    it also takes a cluster's ZooKeeper and asks every broker there (stats)."""
    what = ("bootstrap endpoint(s), tcp://HOST:PORT[,tcp://HOST:PORT...]: the master is found among them; or a "
            "cluster's ZooKeeper, zk://HOST:PORT[,HOST:PORT...][/chroot]" if several
            else "the broker, tcp://HOST:PORT; or a cluster's ZooKeeper, zk://HOST:PORT[,HOST:PORT...][/chroot]: "
                 "every broker registered there" if cluster
            else "the broker, tcp://HOST:PORT")
    p.add_argument("--broker", default=os.environ.get("HPBROKER_URL", DEFAULT_URL),
                   help=f"{what} (default: $HPBROKER_URL or %(default)s)")
    p.set_defaults(broker_several=several)
    p.add_argument("--connect-timeout-ms", type=int, default=5000, metavar="MS",
                   help="give up when the broker does not answer the first request within MS (default %(default)s)")
    p.add_argument("--curve-secret-key-file", metavar="FILE", default=os.environ.get("HPBROKER_CURVE_SECRET_KEY_FILE"),
                   help="CURVE: this client's secret certificate, NAME.key_secret (hpbroker keys generate; default "
                        "$HPBROKER_CURVE_SECRET_KEY_FILE); needs --broker-public-key")
    p.add_argument("--broker-public-key", metavar="KEY", default=os.environ.get("HPBROKER_BROKER_PUBLIC_KEY"),
                   help="CURVE: the broker's public key (Z85) or its public certificate NAME.key (default "
                        "$HPBROKER_BROKER_PUBLIC_KEY)")


def curve_args(args) -> dict:
    """The CURVE keyword arguments of Producer, Consumer, Admin and request() from the flags."""
    return {"curve_secret_key_file": args.curve_secret_key_file, "broker_public_key": args.broker_public_key}


def user_error(e: BrokerError, url: str):
    """A one-line UserError (exit 1) for a BrokerError."""
    if e.code == ErrorCode.REQUEST_TIMED_OUT:
        return UserError(f"no answer from the broker at {url} (is it running and reachable?)", 1)
    return UserError(str(e), 1)


def check_broker_arg(args) -> None:
    """A malformed --broker is one line and exit 2, not a traceback."""
    from hpbroker.client.transport import parse_bootstrap

    if args.broker.strip().startswith("zk://"):  # a cluster found in ZooKeeper (docs/client.md)
        from hpbroker.cluster.client_view import parse_zk_url

        if getattr(args, "command", None) not in ZK_COMMANDS:
            raise UserError(f"--broker zk://...: only {', '.join(ZK_COMMANDS)} take a cluster's ZooKeeper; "
                            "name a broker (tcp://HOST:PORT)", 2)
        try:
            parse_zk_url(args.broker)
        except ValueError as e:
            raise UserError(f"--broker: {e}", 2) from None
        urls = [args.broker]
    else:
        urls = None
    try:
        urls = urls or parse_bootstrap(args.broker)
    except ValueError as e:
        raise UserError(f"--broker: {e}", 2) from None
    if len(urls) > 1 and not args.broker_several:
        raise UserError(f"--broker: this command talks to one broker, got {len(urls)}: {args.broker}", 2)
    from hpbroker.client.curve import client_curve

    try:
        client_curve(args.curve_secret_key_file, args.broker_public_key)
    except ValueError as e:
        raise UserError(f"--curve-secret-key-file/--broker-public-key: {e}", 2) from None
