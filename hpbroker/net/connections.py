"""Which client connection a request came over, even when its fd is reused.

A local transaction is rolled back when the connection that began it
closes (docs/transactions.md).  ZeroMQ names a ROUTER's connections to
the application only by file descriptor: ``zmq.SRCFD`` on a received
frame, and the ``value`` of the socket monitor's events.  A closed
connection's fd number is free at once, so a new connection may get it
before the acceptor has read the old one's EVENT_DISCONNECTED.  By fd
alone, that late event would roll back the new connection's transactions.

The monitor's events are in the order they happened, so counting
EVENT_ACCEPTED per fd tells the connections on one fd apart:

=========================  ============================================
event (in monitor order)   effect
=========================  ============================================
EVENT_ACCEPTED fd          ``generation[fd] += 1``: a new connection
EVENT_DISCONNECTED fd      the connection ``(fd, generation[fd])`` is gone
a request over fd          it came over ``(fd, generation[fd])``
=========================  ============================================

The last row holds only when every event emitted before the request was
read has been taken: libzmq emits EVENT_ACCEPTED before the connection's
handshake, so before any of its messages can arrive.  The acceptor
therefore takes the monitor's events right before it binds a request to
its connection (:meth:`Acceptor._connection_of
<hpbroker.net.acceptor.Acceptor._connection_of>`).  This module is the
bookkeeping alone, with no sockets.
"""

from __future__ import annotations

import zmq

#: the monitor events a ROUTER's connection tracking needs
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

Connection = tuple[int, int]  # (fd, generation)


class Connections:
    """Generations of a ROUTER's client connections, fed its monitor's events."""

    __slots__ = ("generation",)

    def __init__(self) -> None:
        self.generation: dict[int, int] = {}

    def of(self, fd: int) -> Connection:
        """The connection a request read from ``fd`` came over."""
        return fd, self.generation.get(fd, 0)

    def on_event(self, event: int, fd: int) -> Connection | None:
        """Take one monitor event; -> the connection that closed, for
        EVENT_DISCONNECTED, else None."""
        if event == zmq.EVENT_ACCEPTED:
            self.generation[fd] = self.generation.get(fd, 0) + 1
            return None
        if event == zmq.EVENT_DISCONNECTED:
            return self.of(fd)
        return None
