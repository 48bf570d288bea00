"""``Admin``: topics and offsets, one synchronous request at a time."""

from __future__ import annotations

from typing import NamedTuple

from hpbroker.client.transport import Transport
from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import EARLIEST, LATEST, CreateTopic, ListOffsets, MetadataReply, TopicMetadata


class PartitionInfo(NamedTuple):
    partition: int
    leader: int
    leader_epoch: int
    earliest: int
    latest: int


class Admin:
    def __init__(self, bootstrap: str = "tcp://127.0.0.1:7600", *, request_timeout_ms: int = 30_000,
                 connect_timeout_ms: int = 10_000):
        self._t = Transport(bootstrap, request_timeout_ms=request_timeout_ms)
        self.connect_timeout_ms = connect_timeout_ms
        self._bootstrapped = False

    def metadata(self, topics: list[str] | None = None) -> MetadataReply:
        """The raw metadata reply.  Naming a topic may auto-create it
        (broker setting); ``None`` lists the existing ones only."""
        rep = self._t.metadata(topics, timeout_ms=None if self._bootstrapped else self.connect_timeout_ms)
        self._bootstrapped = True
        return rep

    def create_topic(self, name: str, partitions: int, *, if_not_exists: bool = False) -> int:
        """Create ``name``; returns its partition count."""
        self._ensure()
        rep, _ = self._t.call(self._t.acceptors[0], CreateTopic(id=self._t.next_id(), topic=name, partitions=partitions,
                                                                if_not_exists=if_not_exists))
        return rep.partitions

    def list_topics(self) -> dict[str, int]:
        """{topic: partition count} of every existing topic."""
        return {t.name: len(t.partitions) for t in self.metadata(None).topics if not t.code}

    def topic(self, name: str) -> TopicMetadata:
        """Metadata of an existing topic (never auto-creates it)."""
        for t in self.metadata(None).topics:
            if t.name == name and not t.code:
                return t
        raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")

    def describe(self, name: str) -> list[PartitionInfo]:
        """Every partition of ``name`` with its leader and earliest/latest offsets."""
        t = self.topic(name)
        return [
            PartitionInfo(p.partition, p.leader, p.leader_epoch,
                          self.list_offsets(name, p.partition, EARLIEST), self.list_offsets(name, p.partition, LATEST))
            for p in sorted(t.partitions, key=lambda p: p.partition)
        ]

    def list_offsets(self, topic: str, partition: int, spec: int) -> int:
        """spec -2 = earliest, -1 = latest (high watermark), >= 0 = timestamp ms."""
        self._ensure()
        rep, _ = self._t.call(self._t.endpoint_for(partition),
                              ListOffsets(id=self._t.next_id(), topic=topic, partition=partition, spec=spec))
        return rep.offset

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ensure(self) -> None:
        if not self._bootstrapped:
            self.metadata(None)
