"""The supervisor's control socket: what its children ask and report.

:class:`~hpbroker.broker.supervisor.Supervisor` inherits this part.  The
writers, acceptors, replicator and text listeners send
:mod:`hpbroker.ipc.control` messages to the supervisor's ROUTER (ready,
endpoints, topic creation, epochs seen, promotion); the supervisor
publishes the cluster view (``ClusterView``) on its PUB socket whenever it
changes, and the acceptors serve metadata from it.
"""

from __future__ import annotations

import logging

from hpbroker.broker import state as broker_state
from hpbroker.broker.topics import TopicError
from hpbroker.ipc import control
from hpbroker.protocol.errors import ErrorCode
from hpbroker.sockets import drain

log = logging.getLogger("hpbroker.supervisor")


class ControlServer:
    """The Supervisor's control messages and its published view (it
    provides ``cfg``, ``topics``, ``control``, ``view_pub``, ``cluster``,
    the role and endpoint fields, ``reigns``, ``_ready`` and ``promote``)."""

    def view(self) -> control.ClusterView:
        return control.ClusterView(cluster_id=self.cfg.broker.cluster_id, broker_id=self.cfg.broker.broker_id,
                                   leader_epoch=self.epoch, acceptors=[e or "" for e in self.endpoints],
                                   topics=dict(self.topics.topics), role=self.role, leader_id=self.leader_id,
                                   replication=self._replication_view(),
                                   replication_acks=self._replication_acks(), promoted_from=self.promoted_from,
                                   cluster_map=self.cluster.map_bytes if self.cluster is not None else b"")

    def _replication_view(self) -> list[str]:
        """A master's replication endpoints for its metadata: [fetch, ack, pub
        of writer 0, pub of writer 1, ...]; empty unless master."""
        if self.role != "master" or not self.replication_endpoints or not all(self.pub_endpoints):
            return []  # not (yet) a master serving slaves
        return [*self.replication_endpoints, *self.pub_endpoints]

    def _replication_acks(self) -> list[str]:
        """Where a sync master's acceptors take slave writers' reports; an
        async master holds no acks=all back, so it asks for none."""
        if self.cfg.replication.mode != "sync" or not self._replication_view():
            return []
        return list(self.ack_endpoints)

    def publish_view(self) -> None:
        self.view_pub.send(control.encoder.encode(self.view()))
        if self.cluster is not None:
            self.cluster.topics_changed(dict(self.topics.topics))

    def _serve_control(self, timeout_ms: int) -> None:
        if not self.control.poll(timeout_ms):
            return
        for ident, raw in drain(self.control, multipart=True):
            msg = control.to_supervisor.decode(raw)
            reply = self._on_control(msg)
            if reply is not None:
                self.control.send_multipart([ident, control.encoder.encode(reply)])

    def _on_control(self, msg):
        match msg:
            case control.WriterReady():
                self._ready.add(f"writer{msg.writer}")
                if 0 <= msg.writer < len(self.pub_endpoints):
                    self.pub_endpoints[msg.writer] = msg.pub_endpoint
                return None
            case control.WriterPublishing():
                if 0 <= msg.writer < len(self.pub_endpoints):
                    self.pub_endpoints[msg.writer] = msg.endpoint
                    if self._replication_view():
                        self.publish_view()  # the last one after a promotion completes the metadata
                return None
            case control.AcceptorHello():
                self.endpoints[msg.acceptor] = msg.endpoint
                self.ack_endpoints[msg.acceptor] = msg.ack_endpoint
                return self.view()
            case control.EnsureTopic():
                return self._ensure_topic(msg)
            case control.ReplicatorReady():
                self.replication_endpoints = msg.endpoints
                return None
            case control.SeenEpoch():
                if msg.epoch > self.epoch or (msg.following and (msg.master_id != self.leader_id or msg.epoch not in self.reigns)):
                    self.epoch = max(self.epoch, msg.epoch)
                    if msg.following:
                        self.reigns.add(msg.epoch)  # its history is this log's from now
                    broker_state.save_epoch(self.data_dir, self.epoch, self.reigns)
                    if msg.following:
                        self.leader_id = msg.master_id
                        self.publish_view()
                return control.Ack()
            case control.Promote():
                return self.promote()
            case control.TextListenerReady():
                self.text_port = msg.port
                self.text_ready += 1
                return None
        return control.Ack()

    def _ensure_topic(self, msg: control.EnsureTopic) -> control.TopicResult:
        b = self.cfg.broker
        existing = self.topics.topics.get(msg.name)
        if existing is not None:
            if msg.explicit and not msg.if_not_exists:
                return control.TopicResult(code=ErrorCode.TOPIC_ALREADY_EXISTS, message=f"topic {msg.name!r} already exists", view=self.view())
            return control.TopicResult(code=0, message="", view=self.view())
        if not msg.explicit and not b.auto_create_topics:
            return control.TopicResult(code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, message=f"unknown topic {msg.name!r} (auto_create_topics is off)", view=self.view())
        try:
            self.topics.create(msg.name, msg.partitions or b.default_partitions)
        except TopicError as e:
            return control.TopicResult(code=ErrorCode.BAD_REQUEST, message=str(e), view=self.view())
        log.info("created topic %s with %d partitions", msg.name, self.topics.topics[msg.name])
        self.publish_view()
        return control.TopicResult(code=0, message="", view=self.view())
