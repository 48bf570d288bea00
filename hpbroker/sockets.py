"""ZeroMQ sockets as every broker process makes them, and their non-blocking I/O.

One factory sets the options each internal and client-facing socket needs
(``LINGER`` above all: ZeroMQ's default of forever makes a process that
closes a socket with unsent messages hang at exit), so a new socket cannot
forget one.  :func:`drain` and :func:`try_send` are the two shapes of
non-blocking I/O the loops use: read everything waiting, and send unless the
peer's queue is full.  No hpbroker imports: net, replication and broker all
use it.
"""

from __future__ import annotations

from typing import Iterator

import zmq


def make_socket(ctx: zmq.Context, kind: int, *, linger_ms: int = 0, sndhwm: int | None = None,
                rcvhwm: int | None = None, subscribe: bytes | None = None, maxmsgsize: int | None = None,
                options: dict[int, int] | None = None, connect: str | list[str] | tuple[str, ...] = (),
                bind: str | None = None) -> zmq.Socket:
    """A socket of ``kind`` with ``LINGER`` (default 0: unsent messages are
    dropped at close), high-water marks, a SUB prefix and a size cap set
    (and any other integer ``options``, e.g. ``{zmq.IMMEDIATE: 1}``) before it
    connects to ``connect`` (one endpoint or several) or binds ``bind``.  The bound endpoint is ``sock.getsockopt_string(zmq.LAST_ENDPOINT)``."""
    s = ctx.socket(kind)
    try:
        s.setsockopt(zmq.LINGER, linger_ms)
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
