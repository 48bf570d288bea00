"""The ZooKeeper tree of a cluster: every path and the data at it.

One module names the tree so brokers, clients and the console read the same
layout.  It follows MetaQ's (``../shared/METAQ.md`` 1.9) where it fits, under
a chroot given in the connect string (``HOST:PORT[,HOST:PORT...][/chroot]``)
and the root ``/meta``.  docs/cluster.md documents each node's lifetime.

A *replica set* is MetaQ's broker id: one master and its slaves, holding the
same partitions.  Its number is the master's ``broker.broker_id`` unless
``cluster.replica_set`` says otherwise; every broker of a set keeps its own
unique ``broker.broker_id`` (leader epochs are congruent to it, so two
brokers never share an epoch).  A partition's global name is MetaQ's
``<set>-<partition>``.

=================================================  ==========  =========================================
path                                               kind        data (JSON unless said)
=================================================  ==========  =========================================
/meta/brokers/ids/<set>/master                     ephemeral   :class:`BrokerNode` of the master
/meta/brokers/ids/<set>/slave<broker_id>           ephemeral   :class:`BrokerNode` of a slave
/meta/brokers/ids/<set>/epoch                      persistent  :class:`EpochNode`; written only with
                                                               the version read (compare-and-set)
/meta/brokers/ids/<set>/master_config_checksum     persistent  text: crc32 of the shared config
/meta/brokers/topics/<topic>/<set>-m               ephemeral   text: partition count (MetaQ's format)
/meta/brokers/topics/<topic>/<set>-s<broker_id>    ephemeral   text: partition count
/meta/config/cluster                               persistent  :class:`SharedConfig`
/meta/config/acl                                   persistent  text: the cluster's ACL (TOML, as an acl_file)
/meta/consumers/<group>/ids/<group>_<member>       ephemeral   :class:`MemberNode`
/meta/consumers/<group>/owners/<topic>/<set>-<p>   ephemeral   text: the owning member's id
/meta/consumers/<group>/offsets/<topic>/<set>-<p>  persistent  text: ``<msgId>-<offset>`` (MetaQ 1.4)
=================================================  ==========  =========================================
"""

from __future__ import annotations

import msgspec

ROOT = "/meta"
BROKER_IDS = f"{ROOT}/brokers/ids"
BROKER_TOPICS = f"{ROOT}/brokers/topics"
CONSUMERS = f"{ROOT}/consumers"
SHARED_CONFIG = f"{ROOT}/config/cluster"
ACL = f"{ROOT}/config/acl"


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def replica_set(rs: int) -> str:
    return f"{BROKER_IDS}/{rs}"


def master(rs: int) -> str:
    return f"{BROKER_IDS}/{rs}/master"


def slave(rs: int, broker_id: int) -> str:
    return f"{BROKER_IDS}/{rs}/slave{broker_id}"


def epoch(rs: int) -> str:
    return f"{BROKER_IDS}/{rs}/epoch"


def config_checksum(rs: int) -> str:
    return f"{BROKER_IDS}/{rs}/master_config_checksum"


def topic(name: str) -> str:
    return f"{BROKER_TOPICS}/{name}"


def topic_master(name: str, rs: int) -> str:
    return f"{BROKER_TOPICS}/{name}/{rs}-m"


def topic_slave(name: str, rs: int, broker_id: int) -> str:
    return f"{BROKER_TOPICS}/{name}/{rs}-s{broker_id}"


def group_ids(group: str) -> str:
    return f"{CONSUMERS}/{group}/ids"


def group_member(group: str, member: str) -> str:
    return f"{CONSUMERS}/{group}/ids/{group}_{member}"


def group_owner(group: str, topic_name: str, rs: int, partition: int) -> str:
    return f"{CONSUMERS}/{group}/owners/{topic_name}/{rs}-{partition}"


def group_offset(group: str, topic_name: str, rs: int, partition: int) -> str:
    return f"{CONSUMERS}/{group}/offsets/{topic_name}/{rs}-{partition}"


def parse_partition(name: str) -> tuple[int, int]:
    """``"<set>-<p>"`` -> (set, p); ValueError for anything else."""
    a, sep, b = name.partition("-")
    if not sep or not a.isdigit() or not b.isdigit():
        raise ValueError(f"not a partition name <set>-<partition>: {name!r}")
    return int(a), int(b)


def parse_topic_child(name: str) -> tuple[int, str, int | None]:
    """``"<set>-m"`` -> (set, "m", None); ``"<set>-s<id>"`` -> (set, "s", id)."""
    a, sep, b = name.partition("-")
    if sep and a.isdigit():
        if b == "m":
            return int(a), "m", None
        if b.startswith("s") and b[1:].isdigit():
            return int(a), "s", int(b[1:])
    raise ValueError(f"not a topic registration <set>-m or <set>-s<id>: {name!r}")


class BrokerNode(msgspec.Struct, frozen=True):
    """Who a registered broker is and where to reach it."""

    broker_id: int
    replica_set: int
    url: str  # the client port, tcp://HOST:PORT (acceptor 0; metadata gives the others)
    role: str  # "master" or "slave"
    epoch: int  # the leader epoch it serves (a slave: its master's)
    mode: str = ""  # replication.mode: "sync" or "async"
    http: str = ""  # http://HOST:PORT of /metrics, /readyz; "" = none
    text: str = ""  # HOST:PORT of the MetaQ text port; "" = none
    started_ms: int = 0
    #: a master: the broker ids of the slaves its replicator last called in
    #: sync (sync mode); a slave promotes itself only if it is listed here
    #: (or replication.unclean_promotion).  Added by the broker agent.
    insync: list[int] = []
    #: the version of the cluster's shared settings it runs with (-1: none), and
    #: MetaQ's master_config_checksum of its effective config (hpbroker/cluster/shared_config.py)
    config_version: int = -1
    config_checksum: int = 0


class EpochNode(msgspec.Struct, frozen=True):
    """The replica set's leader epoch and the broker that holds it.  A
    promotion writes it with the version it read, so of two racing slaves
    one wins; a returning master that reads a higher epoch than its own
    becomes a slave."""

    epoch: int
    broker_id: int
    at_ms: int = 0


class SharedConfig(msgspec.Struct, frozen=True):
    """Settings shared by the cluster: the TOML text and its version."""

    version: int
    toml: str


class MemberNode(msgspec.Struct, frozen=True):
    member: str
    topics: list[str] = []
    host: str = ""
    pid: int = 0


def encode(node: msgspec.Struct) -> bytes:
    return msgspec.json.encode(node)


def decode(data: bytes, kind: type):
    return msgspec.json.decode(data, type=kind)
