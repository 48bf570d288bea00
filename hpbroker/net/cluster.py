"""An acceptor's link to its supervisor: the cluster view, and asking for more.

The supervisor publishes a :class:`hpbroker.ipc.control.ClusterView`
(topics, acceptors, role, leader epoch) on every change; the acceptor keeps
the latest in :attr:`Cluster.view`.  The rare things only the supervisor
can do - register this acceptor, create a topic, promote - are synchronous
requests on one DEALER socket, passed in.
"""

from __future__ import annotations

import os

import zmq

from hpbroker.ipc import control
from hpbroker.protocol.errors import BrokerError, ErrorCode


class Cluster:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock  # DEALER to the supervisor's control ROUTER
        self.view: control.ClusterView | None = None

    def ask(self, msg, timeout_ms: int = 10_000) -> object:
        """A synchronous request to the supervisor (rare: hello, topic creation, promotion)."""
        self.sock.send(control.encoder.encode(msg))
        if not self.sock.poll(timeout_ms):
            raise BrokerError(ErrorCode.INTERNAL, "the supervisor did not answer a control request")
        return control.from_supervisor.decode(self.sock.recv())

    def hello(self, index: int, endpoint: str, ack_endpoint: str) -> None:
        """Tell the supervisor where acceptor ``index`` listens; its answer is the first view."""
        reply = self.ask(control.AcceptorHello(acceptor=index, pid=os.getpid(), endpoint=endpoint,
                                               ack_endpoint=ack_endpoint))
        assert isinstance(reply, control.ClusterView), reply
        self.view = reply

    def ensure_topic(self, name: str, partitions: int = 0, explicit: bool = False, if_not_exists: bool = True) -> int:
        reply = self.ask(control.EnsureTopic(name=name, partitions=partitions, explicit=explicit, if_not_exists=if_not_exists))
        if reply.view is not None:
            self.view = reply.view
        if reply.code:
            raise BrokerError(reply.code, reply.message)
        return self.view.topics[name]

    def partitions_of(self, topic: str, auto: bool = True) -> int:
        n = self.view.topics.get(topic)
        if n is None:
            if not auto:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic {topic!r}")
            n = self.ensure_topic(topic)
        return n

    def check_partition(self, topic: str, partition: int, auto: bool = True) -> None:
        n = self.partitions_of(topic, auto)
        if not 0 <= partition < n:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} has partitions 0..{n - 1}, not {partition}")
