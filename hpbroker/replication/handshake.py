"""What a slave checks before it follows a master.

First the master's metadata: it serves replication, speaks this release's
replication version and belongs to this cluster; its replication endpoints
come out.  Then its ``Welcome`` to the slave's ``Hello``: not refused, the
same cluster, and an epoch no older than one this slave has seen (else the
master is stale).  Any failed check raises :class:`Refusal`, whose text is
what the slave's stats show as ``replication_detail``.

Pure checks over decoded messages; the sockets are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpbroker.ipc import replica as ipc_replica
from hpbroker.protocol import messages as m
from hpbroker.replication import messages as rm


class Refusal(RuntimeError):
    """This slave will not follow that master (the reason is the message)."""


@dataclass(frozen=True)
class Endpoints:
    """A master's replication endpoints, from its metadata."""

    fetch: str  # ROUTER: handshake, keep-alives, epoch ends, catch-up reads
    ack: str  # PULL: the slave's SlaveAck
    pubs: list[str]  # one PUB per master writer
    acceptor_acks: list[str]  # where the slave's writers report each flush


def check_metadata(rep, master: str, cluster_id: str) -> Endpoints:
    """The endpoints of the master at ``master`` from its metadata reply ``rep``."""
    if not isinstance(rep, m.MetadataReply) or len(rep.replication) < 3 or not all(rep.replication):
        raise Refusal(f"{master} does not serve replication (is it a master?)")
    if rep.replication_version != ipc_replica.VERSION:
        raise Refusal(f"{master} speaks replication version {rep.replication_version}, this "
                      f"slave {ipc_replica.VERSION}: run the same hpbroker release on master and slave")
    if rep.cluster_id != cluster_id:
        raise Refusal(f"{master} belongs to cluster {rep.cluster_id!r}, not {cluster_id!r}")
    fetch, ack, *pubs = rep.replication
    return Endpoints(fetch=fetch, ack=ack, pubs=pubs, acceptor_acks=list(rep.replication_acks))


def check_welcome(w, cluster_id: str, max_epoch: int) -> rm.Welcome:
    """The master's answer ``w`` to the handshake's Hello, if this slave
    follows it; ``max_epoch`` is the newest epoch seen here."""
    if isinstance(w, rm.Refused):
        raise Refusal(f"the master refused this slave: {w.reason}")
    if w.cluster_id != cluster_id:
        raise Refusal(f"the master's cluster id {w.cluster_id!r} is not ours ({cluster_id!r})")
    if w.epoch < max_epoch:
        raise Refusal(f"the master's epoch {w.epoch} is older than epoch {max_epoch} seen here: a stale master")
    return w
