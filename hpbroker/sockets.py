"""ZeroMQ sockets as every broker process makes them, and their non-blocking I/O.

One factory sets the options each internal and client-facing socket needs
(``LINGER`` above all: ZeroMQ's default of forever makes a process that
closes a socket with unsent messages hang at exit), so a new socket cannot
forget one.  :func:`drain` and :func:`try_send` are the two shapes of
non-blocking I/O the loops use: read everything waiting, and send unless the
peer's queue is full.  No hpbroker imports: net, replication and broker all
use it.

CURVE (``curve=``, a :class:`Curve`): every tcp socket a broker binds for
clients or replicas is a CURVE server when ``[security] curve`` is on, and
every socket that connects to one is a CURVE client with its own key pair
(docs/security.md).  The options go on before bind/connect, here, so no
caller can forget one.  A server socket also sets ``ZAP_DOMAIN`` (who may
connect is the ZAP handler's question, :mod:`hpbroker.security.zap`) and
``ZAP_ENFORCE_DOMAIN``: with no ZAP handler running in the context, every
connection is refused rather than every key accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import zmq
import zmq.utils.z85


@dataclass(frozen=True)
class Curve:
    """One side's CURVE settings: its own key pair (Z85, 40 characters
    each) and either the server's public key (a client) or the ZAP domain
    its peers are checked in (a server)."""

    public: bytes
    secret: bytes
    server_key: bytes | None = None  # a client: the public key of the server it connects to
    domain: str = ""  # a server: the ZAP domain (zmq.ZAP_DOMAIN)

    @property
    def server(self) -> bool:
        return self.server_key is None

    @classmethod
    def load(cls, secret_key_file: str, *, server_key: bytes | str | None = None, domain: str = "") -> "Curve":
        """From a secret certificate (``NAME.key_secret``, as
        ``zmq.auth.create_certificates`` writes it); ``server_key``: a
        client's server public key, Z85 or the path of a public certificate.
        ValueError (one line) for a file that holds no key pair."""
        public, secret = load_certificate(secret_key_file)
        if not secret:
            raise ValueError(f"{secret_key_file} holds no secret key (give NAME.key_secret, not NAME.key)")
        return cls(public, secret, None if server_key is None else public_key(server_key), domain)

    def apply(self, s: zmq.Socket) -> None:
        s.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        s.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        if self.server_key is None:
            s.setsockopt(zmq.CURVE_SERVER, 1)
            s.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())
            s.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        else:
            s.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)


def load_certificate(path: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of a ZeroMQ certificate file; ValueError
    naming the file when it cannot be read or holds no public key."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a CURVE certificate from {path}: {e}") from None
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise ValueError(f"{path} is not a CURVE certificate (keys must be 40 Z85 characters)")
    return public, secret


def public_key(key: bytes | str) -> bytes:
    """A Z85 public key given as itself (40 characters) or as the path of
    a certificate that holds it."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) == 40 and not os.path.exists(raw):
        try:
            zmq.utils.z85.decode(raw)
        except (ValueError, KeyError):
            pass
        else:
            return raw
    return load_certificate(raw.decode())[0]


def make_socket(ctx: zmq.Context, kind: int, *, linger_ms: int = 0, sndhwm: int | None = None,
                rcvhwm: int | None = None, subscribe: bytes | None = None, maxmsgsize: int | None = None,
                options: dict[int, int] | None = None, connect: str | list[str] | tuple[str, ...] = (),
                bind: str | None = None, curve: Curve | None = None) -> zmq.Socket:
    """A socket of ``kind`` with ``LINGER`` (default 0: unsent messages are
    dropped at close), high-water marks, a SUB prefix and a size cap set
    (and any other integer ``options``, e.g. ``{zmq.IMMEDIATE: 1}``, and
    ``curve``'s CURVE options) before it connects to ``connect`` (one
    endpoint or several) or binds ``bind``.  The bound endpoint is
    ``sock.getsockopt_string(zmq.LAST_ENDPOINT)``."""
    s = ctx.socket(kind)
    try:
        s.setsockopt(zmq.LINGER, linger_ms)
        if curve is not None:
            curve.apply(s)
        if sndhwm is not None:
            s.setsockopt(zmq.SNDHWM, sndhwm)
        if rcvhwm is not None:
            s.setsockopt(zmq.RCVHWM, rcvhwm)
        if maxmsgsize is not None:
            s.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
        if subscribe is not None:
            s.setsockopt(zmq.SUBSCRIBE, subscribe)
        for opt, value in (options or {}).items():
            s.setsockopt(opt, value)
        if bind is not None:
            s.bind(bind)
        for endpoint in [connect] if isinstance(connect, str) else connect:
            s.connect(endpoint)
    except BaseException:
        s.close(0)
        raise
    return s


def drain(sock: zmq.Socket, *, multipart: bool = False, copy: bool = True, limit: int | None = None) -> Iterator:
    """Every message waiting on ``sock`` now, without blocking: bytes (or a
    ``zmq.Frame`` with ``copy=False``), or a list of them with ``multipart``.
    Stops when the queue is empty or after ``limit`` messages."""
    recv = sock.recv_multipart if multipart else sock.recv
    n = 0
    while limit is None or n < limit:
        try:
            msg = recv(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return
        n += 1
        yield msg


def try_send(sock: zmq.Socket, msg, *, multipart: bool = False, copy: bool = True) -> bool:
    """Send without blocking; False when the peer's queue is full (or, for
    a PUSH, no peer is connected), and the message is dropped."""
    try:
        if multipart:
            sock.send_multipart(msg, zmq.NOBLOCK, copy=copy)
        else:
            sock.send(msg, zmq.NOBLOCK, copy=copy)
    except zmq.Again:
        return False
    return True
