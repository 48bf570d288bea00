"""The one interface every consumer-group offset store has, and its error.

Offsets are Kafka's: the value committed for a partition is the NEXT offset
to read there (the last processed record's offset + 1), never the last one
read.  A store knows nothing of brokers or sockets; it maps
``(group, topic, partition)`` to that number and keeps it durably.
"""

from __future__ import annotations

import operator
from typing import Iterable, Mapping, Protocol, runtime_checkable

TopicPartition = tuple[str, int]


@runtime_checkable
class OffsetStore(Protocol):
    """Where a consumer group's committed offsets live.

    Implementations: :class:`~hpbroker.client.stores.FileOffsetStore`,
    :class:`~hpbroker.client.stores.SqlOffsetStore`,
    :class:`~hpbroker.client.stores.ZooKeeperOffsetStore`, or any object
    with these three methods (see :func:`~hpbroker.client.stores.resolve_store`).
    A store may be used from one thread at a time; the built-in ones lock
    internally, so sharing one between threads is safe too.
    """

    def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The committed next-offset of each ``(topic, partition)`` in
        *partitions* that has one.  A partition never committed is absent
        from the result (the consumer then applies ``auto_offset_reset``)."""
        ...

    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Record *offsets* (``(topic, partition) -> next offset``) for
        *group*.  Durable when it returns (fsync, database commit, ZooKeeper
        write acknowledged), and all or nothing where the backend allows it.
        Partitions not in *offsets* keep what they had."""
        ...

    def close(self) -> None:
        """Release connections and files.  Calling it twice is harmless."""
        ...


class OffsetStoreError(Exception):
    """A store's backend failed: unreachable, refused, corrupt, timed out.

    The message names the store (path, table, hosts) and what failed; the
    backend's own exception is chained as ``__cause__``.
    """


def check_group(group: str) -> str:
    if not isinstance(group, str) or not group:
        raise ValueError(f"a consumer group must be a non-empty string, not {group!r}")
    return group


def check_partitions(partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
    out = []
    for tp in partitions:
        try:
            topic, partition = tp
        except (TypeError, ValueError):
            raise ValueError(f"a partition is a (topic, partition) pair, not {tp!r}") from None
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"a topic must be a non-empty string, not {topic!r}")
        p = _as_int(partition)
        if p is None or p < 0:
            raise ValueError(f"a partition number must be an int >= 0, not {partition!r} (topic {topic!r})")
        out.append((topic, p))
    return out


def check_offsets(offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """*offsets* checked (pairs, ints >= 0) and copied, so a bad value is a
    ValueError before anything is written."""
    out = {}
    for tp, offset in offsets.items():
        (key,) = check_partitions([tp])
        value = _as_int(offset)
        if value is None or value < 0:
            raise ValueError(f"the offset of {key[0]}/{key[1]} must be an int >= 0, not {offset!r}")
        out[key] = value
    return out


def _as_int(v) -> int | None:
    """v as a Python int if it is an integer (numpy's too), else None."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None
