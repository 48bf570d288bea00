"""What the client knows of the brokers: the bootstrap list, which one leads,
and what a metadata reply says.  No sockets: :class:`~hpbroker.client.transport.Transport`
asks, these functions decide.

Several brokers (``"tcp://a:7600,tcp://b:7600"``, as Kafka's
bootstrap.servers): the transport asks all of them for metadata at once and
adopts the one :func:`choose_leader` picks - a master (or standalone broker)
with the highest leader epoch, then the order given - so a client given a
master and its slave follows a promotion by itself.  Its owners ask again
when a broker does not answer or says it does not lead (docs/client.md,
"Several brokers: following a failover").
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.protocol.messages import MetadataReply


def parse_bootstrap(bootstrap) -> list[str]:
    """``"tcp://a:1,tcp://b:2"`` or a list of URLs -> the URLs; ValueError naming a bad one."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out = [b.strip() for b in items if b.strip()]
    if not out:
        raise ValueError("no broker URL given")
    for b in out:
        if not b.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"broker URL must look like tcp://HOST:PORT, got {b!r}")
    return out


def choose_leader(answers: dict[str, MetadataReply], bootstraps: list[str], readers: bool) -> str | None:
    """The broker to use among those that answered: a master or standalone
    broker, the highest leader epoch first, then the order of ``bootstraps``.
    With none leading, ``readers`` (consumers: a slave serves fetches) take
    the first slave that answered; others get None."""
    order = {ep: i for i, ep in enumerate(bootstraps)}
    leads = [(rep.leader_epoch, -order[ep], ep) for ep, rep in answers.items() if rep.role in ("master", "standalone")]
    if leads:
        return max(leads)[2]
    if readers and answers:
        return min(answers, key=order.__getitem__)
    return None


def reachable(endpoint: str, bootstrap: str) -> str:
    """A broker bound to a wildcard address advertises it; use the host we
    reached the bootstrap endpoint through instead."""
    try:
        u = urlsplit(endpoint)
        if u.scheme == "tcp" and u.hostname in ("0.0.0.0", "*", "::", ""):
            host = urlsplit(bootstrap).hostname or "127.0.0.1"
            return f"tcp://{host}:{u.port}"
    except ValueError:
        pass
    return endpoint


def topic_partitions(rep: MetadataReply, topic: str) -> int:
    """The partition count of ``topic`` in a metadata reply, or BrokerError."""
    for t in rep.topics:
        if t.name == topic:
            if t.code:
                raise BrokerError(t.code, f"topic {topic!r}")
            if not t.partitions:
                raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} has no partitions")
            return len(t.partitions)
    raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} does not exist")
