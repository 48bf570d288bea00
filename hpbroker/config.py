"""Typed, frozen configuration: one object, loaded from TOML, overridden by flags.

Every key has a default and a description (``msgspec.Meta``); docs/config.md
is generated from these with ``hpbroker config docs`` and a test keeps the
two in step.  Unknown keys are an error, never silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from hpbroker.io.config import LogConfig
from hpbroker.ring import layout as ring_layout

M = msgspec.Meta

#: routing header of a ring record (hpbroker/ipc/handoff.py) with the longest topic name
HANDOFF_HEADROOM = 512


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


AUTO_SPIN_US = 50
AUTO_SPIN_MIN_CPUS = 4  # with fewer, spinning steals the CPU of the side being waited for


class RingConfig(_Section):
    """Shared-memory rings between acceptors and writers."""

    capacity_bytes: Annotated[int, M(ge=1 << 12, description="Data capacity of each acceptor-to-writer ring; must be a power of two.")] = 64 << 20
    spin_us: Annotated[
        Annotated[int, M(ge=0)] | Literal["auto"],
        M(description="How long (microseconds) a waiting side spins before it blocks on the semaphore. auto: 50 on a machine with at least 4 CPUs, 0 with fewer, where a spinning waiter takes the CPU from the very process it waits for (docs/performance.md, 'Spinning on two CPUs')."),
    ] = "auto"
    full_timeout_ms: Annotated[int, M(ge=0, description="How long a producer side waits for space in a full ring before raising RingFull (busy to clients).")] = 1000
    heartbeat_ms: Annotated[int, M(ge=10, description="How often each side stamps its heartbeat in the ring header.")] = 100
    dead_after_ms: Annotated[int, M(ge=50, description="A peer whose pid is gone, or whose heartbeat is older than this, is treated as dead.")] = 1000

    def spin(self, cpus: int | None = None) -> int:
        """``spin_us`` with ``auto`` resolved for a machine of ``cpus`` CPUs (default: this one's)."""
        if self.spin_us != "auto":
            return self.spin_us
        return AUTO_SPIN_US if (cpus or os.cpu_count() or 1) >= AUTO_SPIN_MIN_CPUS else 0


class BrokerConfig(_Section):
    """The broker process tree: endpoints, processes, topics and limits."""

    data_dir: Annotated[str, M(description="Directory holding one sub-directory per topic-partition, topics.json and checkpoints.")] = "hpbroker-data"
    bind: Annotated[str, M(description="Address the client endpoints listen on.")] = "127.0.0.1"
    port: Annotated[int, M(ge=1, le=65535, description="Bootstrap client port: acceptor 0 listens here; clients learn every other acceptor from metadata.")] = 7600
    acceptor_ports: Annotated[list[int], M(description="Ports for acceptors 1..N-1; empty means the OS picks free ports, advertised through metadata.")] = []
    acceptors: Annotated[int, M(ge=1, le=64, description="Number of acceptor processes (ZeroMQ ROUTER sockets, batch checks, fetch reads).")] = 1
    writers: Annotated[int, M(ge=1, le=64, description="Number of disk-writer processes; partitions are hashed to writers.")] = 1
    instance: Annotated[str, M(description="Name prefix of this broker's shared memory and run directory; empty means 'p<port>', so brokers on different ports never collide.")] = ""
    run_dir: Annotated[str, M(description="Directory for the internal ipc:// sockets; empty means /tmp/hpbroker-<instance>.")] = ""
    cluster_id: Annotated[str, M(description="Cluster name reported in metadata and checked by replication handshakes.")] = "hpbroker"
    broker_id: Annotated[int, M(ge=0, le=1023, description="This broker's id in metadata, unique in its cluster (a slave with its master's id is refused). A broker only takes leader epochs congruent to its id modulo 1024, so two brokers that both believe they are master never share an epoch.")] = 0
    auto_create_topics: Annotated[bool, M(description="Create an unknown topic on its first metadata request or produce.")] = True
    default_partitions: Annotated[int, M(ge=1, le=4096, description="Partitions of an automatically created topic.")] = 4
    max_batch_bytes: Annotated[int, M(ge=1024, description="Largest record batch a producer may send (MESSAGE_TOO_LARGE above it).")] = 4 << 20
    max_request_bytes: Annotated[int, M(ge=1024, description="Largest produce request (all its batches; MESSAGE_TOO_LARGE above it). ZMQ_MAXMSGSIZE on client sockets is 4 times this, at least 64 MiB: a larger frame makes ZeroMQ drop the connection with no reply, anything smaller gets an error code. A request travels as one ring record, so it must fit the ring's largest record (an eighth of ring.capacity_bytes, less 512 bytes of routing header).")] = 4 << 20
    max_fetch_bytes: Annotated[int, M(ge=1024, description="Upper bound on the bytes one fetch reply carries.")] = 8 << 20
    max_filter_scan_bytes: Annotated[int, M(ge=1024, description="Most bytes of log a fetch with a server-side filter reads for one reply (plus one batch): it bounds the acceptor's time per filtered fetch, and a fetch that reads this much without matching max_bytes is answered with what matched and the offset to go on from (docs/protocol.md, Filters).")] = 4 << 20
    max_pending_requests: Annotated[int, M(ge=1, description="Produce requests an acceptor holds while waiting for durability; beyond it producers get BUSY.")] = 65536
    cpu_affinity: Annotated[Literal["auto", "off"], M(description="auto: pin acceptors and writers to distinct cores (writers from the last core down) and place each ring on its writer's NUMA node; off: let the OS schedule.")] = "off"
    acceptor_cpus: Annotated[list[int], M(description="Explicit CPU for each acceptor (overrides auto).")] = []
    writer_cpus: Annotated[list[int], M(description="Explicit CPU for each writer (overrides auto).")] = []
    shutdown_timeout_ms: Annotated[int, M(ge=0, description="On SIGTERM, how long to wait for in-flight batches to become durable before answering them with an error.")] = 10_000
    zmq_hwm: Annotated[int, M(ge=0, description="ZeroMQ send/receive high-water mark (messages) on client sockets.")] = 10_000
    malloc_mmap_threshold_bytes: Annotated[int, M(ge=0, le=32 << 20, description="glibc only: every broker process serves allocations below this size from its reusable heap (mallopt M_MMAP_THRESHOLD, and M_TRIM_THRESHOLD at four times it) instead of fresh mmap'd pages, so the 1 MiB buffers ZeroMQ allocates per message are not faulted in page by page each time. 0 leaves glibc's default.")] = 32 << 20
    gil_switch_interval_us: Annotated[int, M(ge=0, description="sys.setswitchinterval of every broker process: how long a thread may keep the GIL while another waits for it. A writer's I/O threads need the GIL after each pwrite and fdatasync while the loop thread copies batches; Python's default is 5000. 0 leaves Python's default.")] = 200


class ReplicationConfig(_Section):
    """Master-slave replication over ZeroMQ (docs/replication.md)."""

    role: Annotated[
        Literal["standalone", "master", "slave"],
        M(description="standalone: no replication. master: stream every group-commit round to slaves. slave: follow the master named by 'master'. Any other [replication] key set without a role, or a 'master' URL on a broker that is not a slave, refuses the start (docs/replication.md, 'One role, said once')."),
    ] = "standalone"
    master: Annotated[str, M(description="slave: the master's client bootstrap URL, e.g. tcp://10.0.0.1:7600; the replication endpoints are learned from its metadata.")] = ""
    mode: Annotated[
        Literal["sync", "async"],
        M(description="sync: acks=all is acknowledged only once the slave has fdatasync'd the batch too. async: acks=all equals acks=1; slave lag is reported in stats."),
    ] = "sync"
    fetch_bound: Annotated[
        Literal["auto", "replicated", "durable"],
        M(description="How far a master lets consumers read. replicated: only what every in-sync slave has made durable too (Kafka's high watermark), so a failover never takes back a message a consumer saw; with no slave in sync, up to the master's own durable offset, and the bound never moves backwards. durable: up to the master's own durable offset (MetaQ's behaviour; a failover can take back the newest messages consumers saw). auto: replicated in sync mode, durable in async mode. A slave always serves up to its own durable offset."),
    ] = "auto"
    min_insync_replicas: Annotated[int, M(ge=1, le=2, description="sync mode: replicas (master included) that must be in sync for acks=all; with fewer, acks=all produces fail with NOT_ENOUGH_REPLICAS. 1 allows acks=all without a slave.")] = 2
    replica_lag_max_ms: Annotated[int, M(ge=10, description="A slave that has not caught up with the master's high watermark within this long, or not reported for this long, is out of sync.")] = 10_000
    ack_interval_ms: Annotated[int, M(ge=1, description="slave: report the durable offsets at least this often even when nothing changed (liveness).")] = 200
    pub_port: Annotated[int, M(ge=0, le=65535, description="Port of writer 0's PUB socket that streams each of its group-commit rounds to slaves (as the round starts); writer i binds pub_port + i (0 = each chosen by the OS; all are advertised in metadata). A slave's writers bind only once promoted (if pub_port + i is taken then, an OS-chosen port; metadata names it).")] = 0
    fetch_port: Annotated[int, M(ge=0, le=65535, description="master: port of the ROUTER socket for the handshake and catch-up reads (0 = chosen by the OS).")] = 0
    ack_port: Annotated[int, M(ge=0, le=65535, description="master: port of the PULL socket that receives slaves' durable offsets (0 = chosen by the OS).")] = 0
    acceptor_ack_port: Annotated[int, M(ge=0, le=65535, description="Port of acceptor 0's PULL socket on which slaves' writers report what they made durable, straight after each of their flushes, so a sync acks=all is released without passing through either replicator; acceptor i binds acceptor_ack_port + i (0 = each chosen by the OS; all are advertised in metadata). Bound by masters and slaves alike, so a promotion opens no new port.")] = 0
    writer_report_ms: Annotated[int, M(ge=0, description="A slave's writers tell its replicator and acceptors what they made durable, and a master's writers tell its replicator what they published, at most this often instead of after every flush (0 = after every flush). No acknowledgement waits for these reports: a master's acceptors hear each flush of its own writers and, in sync mode, of the slave's writers at once. A slave's consumers see new data up to this much later.")] = 5
    pub_hwm: Annotated[int, M(ge=1, description="master: PUB high-water mark in messages; a slave that falls further behind misses messages, detects the gap by offset and catches up from the log files.")] = 10_000
    catchup_bytes: Annotated[int, M(ge=4096, description="Bytes per catch-up read from the master's log files.")] = 4 << 20
    catchup_rate_bytes: Annotated[int, M(ge=0, description="slave: at most this many bytes per second of catch-up reads from the master's log files (the history after a restart or a long outage, and repairs of PUB gaps), with bursts of up to catchup_bytes, so a slave re-syncing a long backlog leaves the master's disk and CPU to its producers (Kafka's follower.replication.throttled.rate). The live PUB stream is never held back. While it catches up the slave is out of sync, so in sync mode acks=all produces fail with NOT_ENOUGH_REPLICAS for longer. 0 = no limit. Stats: replication_catch_up_bytes, replication_catch_up_throttled_s.")] = 0
    promote_probe_ms: Annotated[int, M(ge=0, description="slave: before hpbroker promote, ask the master (replication.master) for its metadata and wait this long for an answer; if it answers as a master, the promotion is refused, since it would make two masters (hpbroker promote --force skips the check). The same question, with the same wait, decides whether a promoted broker restarted with its old slave flags stays master (keep_promotion). 0 never asks: promotions go ahead, and a promoted broker stays master.")] = 1000
    keep_promotion: Annotated[bool, M(description="slave: after hpbroker promote, does a restart with the same slave flags (the same replication.master) keep this broker master? true: it starts as master with a new epoch, unless that master answers as a master within promote_probe_ms, in which case it starts as its slave as configured rather than make two masters. false: the flags' role always. Starting as a slave of another master, or as a master by the flags, ends the promotion either way (docs/replication.md, \"A promotion survives a restart\").")] = True
    unclean_truncation: Annotated[bool, M(description="slave: may it cut batches of epochs its master never had? Such batches were acknowledged by a master this one never followed: this broker in a reign of its own, or the other side of a split brain (an old master restarted as master after its slave was promoted). false: the slave refuses to follow such a master and says which offsets and epochs are at stake; true: it cuts them and follows (what they acknowledged is lost), like Kafka's unclean.leader.election.enable.")] = False
    unclean_promotion: Annotated[bool, M(description="Cluster mode (cluster.zookeeper): may a slave that was not in sync promote itself when its master is gone? false: only a slave its master last listed as in sync in ZooKeeper (sync mode) promotes, so nothing acknowledged with acks=all is lost; an async slave, or one that had fallen behind, waits for the master or an operator. true: it promotes anyway, and whatever it lacks of what the master acknowledged is lost (Kafka's unclean.leader.election.enable; docs/cluster.md).")] = False


class GroupsConfig(_Section):
    """[groups]: consumer groups coordinated by this broker (docs/consumer.md)."""

    offsets_partitions: Annotated[int, M(ge=1, le=1024, description="Partitions of the internal __consumer_offsets topic, created on the first group request. A group's offsets live in partition crc32(group) % N, and the acceptor that serves that partition coordinates the group, so N spreads groups over acceptors. Fixed once the topic exists.")] = 8
    heartbeat_interval_ms: Annotated[int, M(ge=10, description="How often members heartbeat (told in every heartbeat reply). A partition a member gives up reaches its next owner on that owner's next heartbeat, so this bounds how long a move takes after a release, a clean leave or an expiry.")] = 500
    min_session_timeout_ms: Annotated[int, M(ge=1, description="The shortest session_timeout_ms a member may ask for (BAD_REQUEST below it).")] = 1000
    max_session_timeout_ms: Annotated[int, M(ge=1, description="The longest session_timeout_ms a member may ask for (BAD_REQUEST above it).")] = 300_000
    default_assignor: Annotated[Literal["sticky", "range", "roundrobin"], M(description="The assignor of a group whose members name none: sticky (balanced, moves the fewest partitions when members come and go), range (MetaQ's default) or roundrobin. Members may name one; the group uses the one most of them name.")] = "sticky"
    commit_timeout_ms: Annotated[int, M(ge=1, description="Upper bound on how long an OffsetCommit waits for its record to be durable (and, under sync replication, on the slave) before REQUEST_TIMED_OUT; a request's own timeout_ms is used when smaller.")] = 30_000


class TransactionsConfig(_Section):
    """[transactions]: local and XA transactions (docs/transactions.md)."""

    log_partitions: Annotated[int, M(ge=1, le=1024, description="Partitions of the internal __transactions topic (the transaction journal), created on the first transaction. A transaction is journalled in partition crc32(txid) % N and coordinated by the acceptor serving it, so N spreads transactions over acceptors. Fixed once the topic exists.")] = 8
    max_timeout_ms: Annotated[int, M(ge=1, description="Cap on a transaction's timeout (MetaQ's maxTxTimeoutInSeconds): a client asking for more gets this. An open (unprepared) transaction is rolled back this long after it began; a prepared XA transaction never times out.")] = 900_000
    max_transaction_bytes: Annotated[int, M(ge=1024, description="Largest transaction, in bytes of record batches; a send past it is refused with TRANSACTION_TOO_LARGE and the transaction rolled back.")] = 64 << 20
    max_open_bytes: Annotated[int, M(ge=1024, description="Bytes of open, prepared and committing transactions one acceptor holds in memory (their batches wait there to be appended at commit); a send past it is refused with TRANSACTION_TOO_LARGE.")] = 512 << 20
    max_open_transactions: Annotated[int, M(ge=1, description="Transactions one acceptor coordinates at once; a begin past it is refused with BUSY.")] = 100_000
    decision_timeout_ms: Annotated[int, M(ge=1, description="How long a prepare, commit or rollback waits for its journal record to be durable (and, under sync replication, on the slave) before REQUEST_TIMED_OUT. A commit whose record did become durable is still applied.")] = 30_000
    remember_finished: Annotated[int, M(ge=0, description="Outcomes of this many recently finished transactions are kept, so a client retrying a commit or rollback whose reply it lost is told the outcome instead of UNKNOWN_TRANSACTION.")] = 10_000
class HttpConfig(_Section):
    """[http]: the HTTP port - Prometheus /metrics, /healthz and /readyz, the HTTP gateway and the dashboard (docs/http.md)."""

    port: Annotated[
        Annotated[int, M(ge=0, le=65535)] | Literal["auto"],
        M(description="Port of the broker's HTTP process. auto: broker.port + 80 (7680 for the default client port 7600), so brokers on different client ports never collide; 0: no HTTP process at all."),
    ] = "auto"
    bind: Annotated[str, M(description="Address the HTTP port listens on; empty means broker.bind.")] = ""
    max_body_bytes: Annotated[int, M(ge=1, description="Largest request body the gateway reads (413 MESSAGE_TOO_LARGE above it). A body larger than one batch goes as several batches, and one larger than broker.max_request_bytes as several requests to its partition, in order.")] = 4 << 20
    rate_limit_per_s: Annotated[int, M(ge=0, description="Gateway requests (produce and consume) per second from one client address; beyond it 429 with code BUSY. The bucket holds one second's worth, so bursts of that size pass. 0 = no limit. /metrics, /healthz, /readyz and the dashboard are not limited.")] = 10_000
    max_wait_ms: Annotated[int, M(ge=0, description="Longest long poll (wait_ms) a consume request may ask for; larger values are cut to it.")] = 30_000
    produce_timeout_ms: Annotated[int, M(ge=1, description="How long a gateway produce waits for its durable ack (the produce request's timeout_ms); past it the reply is 504 REQUEST_TIMED_OUT and the outcome is unknown, as on the ZeroMQ path.")] = 30_000
    metrics_max_partitions: Annotated[int, M(ge=0, description="Most partitions /metrics exports one series each for (per-partition messages, bytes, offsets, sizes, and consumer-group lag rows). Above it the per-partition metrics are exported per topic only, with partition=\"all\" holding the sum over the topic's partitions (so sum by (topic) reads the same in both modes), and hpbroker_metrics_partitions_folded says how many were folded, so a broker with 10 000 partitions costs one series per topic, not 10 000. 0 = always per topic.")] = 2000
    stats_rows: Annotated[int, M(ge=16, le=1 << 20, description="Partition rows each broker process has in the shared-memory stats block (8 words each; pages are touched only as rows are used). A process that serves more partitions than this counts the others in its totals only (hpbroker_stats_rows_full_total).")] = 16384
    poll_ms: Annotated[int, M(ge=100, description="How often the HTTP process asks the broker for its stats, metadata and consumer groups (over the normal ZeroMQ requests) and samples the rates the dashboard charts.")] = 1000
    history_s: Annotated[int, M(ge=10, le=86400, description="Seconds of rate history the dashboard's charts keep.")] = 300
    dashboard: Annotated[bool, M(description="Serve the web dashboard at / and its JSON API at /api/*.")] = True
class SecurityConfig(_Section):
    """[security]: CURVE authentication and encryption, and ACLs (docs/security.md)."""

    curve: Annotated[bool, M(description="Authenticate and encrypt every tcp socket with ZeroMQ CURVE: the client port, the replication ports (PUB, catch-up, acks) and the slaves' connections to their master. Clients need a key pair whose public certificate is in authorized_keys_dir, and the broker's public key. A peer with an unknown key gets no connection at all. Needs server_secret_key_file, authorized_keys_dir and acl_file (or acl_source = zookeeper).")] = False
    server_secret_key_file: Annotated[str, M(description="This broker's secret certificate (NAME.key_secret, as hpbroker keys generate writes it): the key pair every CURVE socket of the broker binds with, and with which a slave authenticates to its master (its principal there is NAME).")] = ""
    authorized_keys_dir: Annotated[str, M(description="Directory of the public certificates (*.key) of the clients and brokers this broker lets connect; a key's principal is its file name without .key (alice.key: alice). Read at start and again after an edit (reload_ms).")] = ""
    acl_file: Annotated[str, M(description="TOML file of the rules that grant principals produce, consume and admin on topics (by name or glob), and replicate (docs/security.md, 'ACLs'). Everything no rule grants is refused with NOT_AUTHORIZED. Read at start and again after an edit (reload_ms).")] = ""
    acl_source: Annotated[Literal["file", "zookeeper"], M(description="Where the ACL comes from. file: acl_file. zookeeper (cluster mode): the cluster's one ACL at /meta/config/acl, written by hpbroker acl push; the broker mirrors each valid version into <data_dir>/acl.zookeeper.toml and takes it like an edited acl_file (reload_ms), and a broker restarted while ZooKeeper has none, or is down, serves the last version it mirrored. A broker that never mirrored one does not start (docs/security.md).")] = "file"
    reload_ms: Annotated[int, M(ge=0, description="How often each broker process looks for edits of acl_file and authorized_keys_dir (by mtime and size), and takes a valid edit without a restart: every later request is checked against the new rules and every later CURVE handshake against the new keys; an invalid edit is logged and the rules in force stay (docs/security.md). 0 = read at start only.")] = 1000
    master_public_key: Annotated[str, M(description="slave: the master's public key (40 Z85 characters) or the path of its public certificate (NAME.key), with which it connects to the master over CURVE.")] = ""
class ScrubConfig(_Section):
    """[scrub]: the background scrubber that re-reads closed segments (docs/reliability.md, "The scrubber")."""

    enabled: Annotated[bool, M(description="Run the scrubber: a process of its own (CPU nice 19, idle I/O class) that re-reads every closed segment, checks every batch (CRC32C, layout, offsets, epochs) and both index files, and fences a partition whose data it finds damaged (its writer refuses appends with PARTITION_FENCED until an operator repairs the segment and removes <partition>/scrub-finding). Recovery trusts closed segments, so without it a bit flipped in an old segment is found only when a consumer's CRC check meets it.")] = True
    rate_bytes: Annotated[int, M(ge=4096, description="Bytes per second the scrubber reads, at most (a token bucket over its reads; it reads around the page cache, with O_DIRECT where log.direct_io and the filesystem allow). 8 MiB/s is a pass over 675 GiB a day.")] = 8 << 20
    pass_interval_ms: Annotated[int, M(ge=0, description="A new pass over every closed segment starts at least this long after the previous one started (a pass that takes longer is followed by the next at once). Progress is kept in <data_dir>/scrub-state.json, so a restart goes on where the pass stopped.")] = 24 * 3600 * 1000
TEXT_PORT_OFFSET = 523  # broker.port 7600 + 523 = 8123, MetaQ's default port
#: MetaQ offsets give each record 2**21 bytes (hpbroker/text/offsets.py): a put body must fit one
TEXT_MAX_BODY = (1 << 21) - 20


class TextProtocolConfig(_Section):
    """[text_protocol]: MetaQ's text protocol and memcached-style stats on a TCP port (docs/protocol-text.md)."""

    port: Annotated[
        Annotated[int, M(ge=0, le=65535)] | Literal["auto"],
        M(description="TCP port of the text listener (MetaQ's put/get/offset/stats/version/quit, memcached's stats). auto: broker.port + 523, which is MetaQ's default 8123 for the default broker.port 7600, and keeps brokers on different ports apart; 0: no text listener."),
    ] = "auto"
    bind: Annotated[str, M(description="Address the text port listens on; empty means broker.bind.")] = ""
    processes: Annotated[int, M(ge=1, le=16, description="Text listener processes sharing the port (SO_REUSEPORT: the kernel spreads connections over them). Each parses and answers its own connections, so more processes use more cores; a connection's requests stay in one process, in order. The stats counters of all of them are added up; the realtime items are those of the process that answers.")] = 1
    acks: Annotated[
        Literal[1, "all"],
        M(description="What a put's answer waits for: 1, this broker's fdatasync (acks=1); all, also the in-sync slaves under sync replication (acks=all, as MetaQ's synchronous slave). Either way the answer means what a ZeroMQ produce's ack means."),
    ] = "all"
    put_timeout_ms: Annotated[int, M(ge=1, description="A put not acknowledged within this long is answered 504 (its outcome is then unknown, as REQUEST_TIMED_OUT is).")] = 30_000
    max_connections: Annotated[int, M(ge=1, description="Open connections the text port takes; one more is answered SERVER_ERROR and closed.")] = 1024
    max_line_bytes: Annotated[int, M(ge=64, le=1 << 20, description="Longest command line; a longer one is answered CLIENT_ERROR and the connection closed (the stream cannot be resynchronised).")] = 4096
    max_body_bytes: Annotated[int, M(ge=1, le=TEXT_MAX_BODY, description="Largest put body (attribute included). A larger one is answered 400 and skipped as it arrives, never buffered. At most 2 MiB less 20 bytes: a MetaQ offset gives a record 2 MiB (docs/protocol-text.md, Offsets), and MetaQ's clients read no larger message. Lowered to broker.max_batch_bytes less 1 KiB where that is smaller (a put becomes a record of a batch).")] = 1 << 20
    max_get_bytes: Annotated[int, M(ge=1024, description="Most bytes of messages one get answer carries, whatever maxSize asks (MetaQ's maxTransferSize).")] = 1 << 20
    max_pending_bytes: Annotated[int, M(ge=1 << 16, description="Per connection: the listener stops reading a connection while this many bytes of its requests wait for answers, or its unsent answers exceed this, until they drain (so a client that does not read, or floods, holds a bounded amount).")] = 8 << 20
    read_bytes: Annotated[int, M(ge=4096, description="Bytes read from one connection per turn of the loop; every put read in one turn (from all connections) goes to the broker as one produce request per partition.")] = 256 << 10
    idle_timeout_ms: Annotated[int, M(ge=0, description="A connection that sends nothing, and has nothing in flight, for this long is closed; so is one whose answers cannot be sent for this long (MetaQ's clients send version as a heartbeat). 0: never.")] = 300_000
    tell_max_offset: Annotated[bool, M(description="A get past the end of a partition is answered 301 with the end (MetaQ's meta.get.tellMaxOffset), instead of 404.")] = False


class ClusterConfig(_Section):
    """[cluster]: cluster mode on ZooKeeper (docs/cluster.md). Without cluster.zookeeper nothing of it runs."""

    zookeeper: Annotated[str, M(description="ZooKeeper connect string HOST:PORT[,HOST:PORT...][/chroot]; empty (the default) runs without a cluster, exactly as before. With it the broker registers under /meta/brokers (hpbroker/cluster/paths.py), a slave finds its master there when replication.master is empty, the replica set's leader epoch is claimed with a compare-and-set of its epoch znode, a master that loses ZooKeeper stops acknowledging (fence_after_ms), and a slave promotes itself when its master is gone.")] = ""
    replica_set: Annotated[int, M(ge=-1, le=1023, description="The replica set (MetaQ's broker id: one master and its slaves, holding the same partitions) this broker belongs to; -1 means broker.broker_id. A slave must name its master's set; every broker keeps its own broker.broker_id.")] = -1
    session_timeout_ms: Annotated[int, M(ge=1000, le=60_000, description="The ZooKeeper session timeout asked for (the server may bound it by its tickTime: 2 to 20 ticks). A dead master's registration vanishes this long after its last contact, and its slave promotes itself at most about 2 s after that; a master cut off from ZooKeeper stops acknowledging before it (fence_after_ms).")] = 6000
    fence_after_ms: Annotated[int, M(ge=0, description="A master that has had no answer from ZooKeeper for this long stops acknowledging produce requests (NOT_LEADER) until ZooKeeper answers again and it still holds the epoch; it must be less than the session timeout, so that the master stops before its session can expire and a slave promote. 0 means two thirds of session_timeout_ms (4000 ms for the default).")] = 0
    probe_ms: Annotated[int, M(ge=50, description="A slave whose master's registration vanished asks the master for its metadata and waits this long for an answer before it takes the master for gone (a refused TCP connection answers at once).")] = 500
    config_version: Annotated[int, M(ge=-1, description="Set by the broker at start, not by hand: the version of the cluster's shared settings (/meta/config/cluster, hpbroker cluster config push) it runs with, -1 for none. Shared settings are the base under the broker's own file and flags (docs/cluster.md, 'Shared settings').")] = -1
    renew_ms: Annotated[int, M(ge=0, description="How often the agent asks ZooKeeper for the epoch znode, which both renews the fencing lease and checks that this master still holds the epoch; 0 means a quarter of the fence threshold.")] = 0

    def fence_ms(self) -> int:
        """fence_after_ms with 0 resolved."""
        return self.fence_after_ms or self.session_timeout_ms * 2 // 3

    def renew_every_ms(self) -> int:
        return self.renew_ms or max(50, self.fence_ms() // 4)


class Config(_Section):
    """The whole broker configuration (TOML tables named after the sections)."""

    broker: BrokerConfig = BrokerConfig()
    log: LogConfig = LogConfig()
    ring: RingConfig = RingConfig()
    replication: ReplicationConfig = ReplicationConfig()
    groups: GroupsConfig = GroupsConfig()
    transactions: TransactionsConfig = TransactionsConfig()
    http: HttpConfig = HttpConfig()
    security: SecurityConfig = SecurityConfig()
    scrub: ScrubConfig = ScrubConfig()
    text_protocol: TextProtocolConfig = TextProtocolConfig()
    cluster: ClusterConfig = ClusterConfig()

    def __post_init__(self):
        cap = self.ring.capacity_bytes
        if cap & (cap - 1):
            raise ValueError(f"ring.capacity_bytes must be a power of two, got {cap}")
        limit = ring_layout.max_payload(cap) - HANDOFF_HEADROOM
        if self.broker.max_request_bytes > limit:
            raise ValueError(
                f"broker.max_request_bytes ({self.broker.max_request_bytes}) must fit one ring record: at most {limit} "
                f"with ring.capacity_bytes = {cap} (raise the ring or lower the request limit)"
            )
        if self.broker.max_batch_bytes > self.broker.max_request_bytes:
            raise ValueError("broker.max_batch_bytes must not exceed broker.max_request_bytes")
        if 0 <= self.log.retention_ms and self.transactions.max_timeout_ms >= self.log.retention_ms // 2:
            raise ValueError(
                f"transactions.max_timeout_ms ({self.transactions.max_timeout_ms}) must be less than half of "
                f"log.retention_ms ({self.log.retention_ms}): an open transaction's journal records must not expire "
                "before it times out")
        if self.replication.pub_port and self.replication.pub_port + self.broker.writers - 1 > 65535:
            raise ValueError(f"replication.pub_port ({self.replication.pub_port}) + broker.writers - 1 must be a port "
                             "number (writer i publishes on pub_port + i)")
        if self.replication.acceptor_ack_port and self.replication.acceptor_ack_port + self.broker.acceptors - 1 > 65535:
            raise ValueError(f"replication.acceptor_ack_port ({self.replication.acceptor_ack_port}) + broker.acceptors - 1 "
                             "must be a port number (acceptor i binds acceptor_ack_port + i)")
        if self.groups.min_session_timeout_ms > self.groups.max_session_timeout_ms:
            raise ValueError("groups.min_session_timeout_ms must not exceed groups.max_session_timeout_ms")
        if self.replication.role == "slave" and not self.replication.master and not self.cluster.zookeeper:
            raise ValueError("replication.role = 'slave' needs replication.master (the master's URL), or "
                             "cluster.zookeeper to find it there")
        if self.cluster.zookeeper and self.replication.role == "standalone":
            raise ValueError("cluster.zookeeper needs replication.role master or slave (--role): in a cluster a broker "
                             "is a replica set's master or one of its slaves (docs/cluster.md)")
        if self.cluster.zookeeper and self.cluster.fence_ms() >= self.cluster.session_timeout_ms:
            raise ValueError(f"cluster.fence_after_ms ({self.cluster.fence_after_ms}) must be less than "
                             f"cluster.session_timeout_ms ({self.cluster.session_timeout_ms}): a master must stop "
                             "acknowledging before its session can expire and a slave take over")
        if self.http.port == "auto" and self.broker.port + 80 > 65535:
            raise ValueError(f"http.port = 'auto' is broker.port + 80, past 65535 for port {self.broker.port}: "
                             "set http.port (0 turns the HTTP port off)")
        sec = self.security
        if sec.curve:
            needs = ("server_secret_key_file", "authorized_keys_dir") + (("acl_file",) if sec.acl_source == "file" else ())
            missing = [k for k in needs if not getattr(sec, k)]
            if missing:
                raise ValueError(f"security.curve = true needs security.{', security.'.join(missing)} (docs/security.md)")
            if self.replication.role == "slave" and not sec.master_public_key:
                raise ValueError("security.curve = true on a slave needs security.master_public_key (the master's public key)")
        if sec.acl_source == "zookeeper" and not self.cluster.zookeeper:
            raise ValueError("security.acl_source = 'zookeeper' needs cluster.zookeeper (the ACL is read from there)")
        check_listeners_under_curve(sec.curve, plaintext_listeners(self))
        if self.text_protocol.port == "auto" and self.broker.port + TEXT_PORT_OFFSET > 65535:
            raise ValueError(f"text_protocol.port = 'auto' is broker.port + {TEXT_PORT_OFFSET}, past 65535 for broker.port "
                             f"{self.broker.port}: set text_protocol.port (0 turns the text listener off)")

    @property
    def replica_set(self) -> int:
        """cluster.replica_set with -1 resolved to broker.broker_id."""
        rs = self.cluster.replica_set
        return self.broker.broker_id if rs < 0 else rs

    @property
    def instance(self) -> str:
        return self.broker.instance or f"p{self.broker.port}"

    @property
    def text_max_body(self) -> int:
        """The largest put body the text port takes: text_protocol.max_body_bytes, or less where
        broker.max_batch_bytes leaves no room for it (a put becomes a record of a batch)."""
        return min(self.text_protocol.max_body_bytes, self.broker.max_batch_bytes - 1024)

    @property
    def http_port(self) -> int:
        """The HTTP port with ``auto`` resolved; 0 when it is off."""
        return self.broker.port + 80 if self.http.port == "auto" else self.http.port

    @property
    def text_port(self) -> int:
        """The text listener's port (``auto`` resolved); 0 when it is off."""
        p = self.text_protocol.port
        return self.broker.port + TEXT_PORT_OFFSET if p == "auto" else p


def plaintext_listeners(cfg: Config) -> list[tuple[str, str]]:
    """(config key, bind address) of every listener that is not a ZeroMQ
    socket and has no authentication of its own (a text-protocol or HTTP
    listener).  Each such listener must add itself here: with CURVE on it
    may only bind to loopback (docs/security.md, "Other listeners").  A
    listener with its own authentication, switched on, is left out."""
    out = []
    if cfg.http.port != 0:
        out.append(("http.bind", cfg.http.bind or cfg.broker.bind))
    if cfg.text_protocol.port != 0:
        out.append(("text_protocol.bind", cfg.text_protocol.bind or cfg.broker.bind))
    return out


def check_listeners_under_curve(curve: bool, listeners: list[tuple[str, str]]) -> None:
    """With CURVE on, ValueError naming the first of ``listeners`` bound
    beyond loopback: it would let anyone on the network past CURVE."""
    if not curve:
        return
    for key, address in listeners:
        if not is_loopback(address):
            raise ValueError(f"{key} = {address!r}: with security.curve = true a listener without its own "
                             "authentication may only bind to loopback (127.0.0.1, ::1, localhost)")


def is_loopback(address: str) -> bool:
    """Is ``address`` (a host name or IP, or a tcp:// URL's host part) a loopback one?"""
    host = address.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_toml(path: str | Path | None) -> dict:
    """The decoded TOML of a config file ({} for None); ConfigError (one line) if unreadable."""
    if path is None:
        return {}
    p = Path(path)
    try:
        return msgspec.toml.decode(p.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except msgspec.DecodeError as e:
        raise ConfigError(f"{p}: {e}") from None


def with_overrides(raw: dict, overrides: dict) -> dict:
    """``raw`` (decoded TOML) with ``section__key=value`` overrides applied (None: not given)."""
    out = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items()}
    for k, v in overrides.items():
        if v is None:
            continue
        section, _, key = k.partition("__")
        if key:
            out.setdefault(section, {})[key] = v
        else:
            out[section] = v
    return out


def load(path: str | Path | None = None, base: dict | None = None, **overrides) -> Config:
    """Load a Config from a TOML file (or the defaults), then apply overrides
    given as ``section__key=value`` keyword arguments.  ``base``: settings
    (decoded TOML) under both, such as a cluster's shared config
    (hpbroker/cluster/shared_config.py)."""
    raw = with_overrides(read_toml(path), overrides)
    for section, keys in (base or {}).items():
        if isinstance(keys, dict):
            raw[section] = {**keys, **(raw.get(section) or {})}
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid config: {e}") from None
    why = role_contradiction(set(raw.get("replication") or {}), cfg)
    if why:
        raise ConfigError(why)
    return cfg


def role_contradiction(given: set[str], cfg: Config) -> str | None:
    """One line saying how the replication settings contradict the role, or
    None.  ``given``: the ``[replication]`` keys the TOML or the flags set.

    A broker must never look replicated while it is not: started with
    ``mode = "sync"`` but no role it ran standalone, acknowledged acks=all
    with no replica at all, and its slave only logged that it found no
    master (docs/replication.md, "One role, said once").  So any
    ``[replication]`` key needs an explicit role, and no key may name a
    different one.  The rules read the effective values, except "given",
    which only load() knows (``mode`` and ``min_insync_replicas`` have
    defaults, so only their presence says the operator meant replication).
    """
    r, b = cfg.replication, cfg.broker
    if given and "role" not in given:
        keys = ", ".join(f"replication.{k}" for k in sorted(given))
        return (f"{keys} set but replication.role is not: without a role the broker runs standalone and would "
                "acknowledge acks=all with no replica; set replication.role (--role master, or --role slave "
                "--master URL)")
    if r.role != "slave" and r.master:
        return (f"replication.master = {r.master!r} is a master to follow, but replication.role is {r.role!r}; "
                "only a slave follows a master (--role slave)")
    if r.role == "master" and r.mode == "async" and "min_insync_replicas" in given and r.min_insync_replicas > 1:
        return (f"replication.min_insync_replicas = {r.min_insync_replicas} but replication.mode is 'async', which "
                "acknowledges acks=all without waiting for any replica; use mode = 'sync' or drop the key")
    if r.role == "slave" and _is_self(r.master, b.bind, b.port):
        return f"replication.master = {r.master!r} is this broker's own address: a slave cannot follow itself"
    return None


def _is_self(url: str, bind: str, port: int) -> bool:
    """Does ``url`` (tcp://HOST:PORT) name this broker's bootstrap endpoint?"""
    rest = url.removeprefix("tcp://")
    host, _, p = rest.rpartition(":")
    if not p.isdigit() or int(p) != port:
        return False
    host = host.strip("[]")
    local = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "*"}
    return host == bind or (host in local and bind in local)


def dumps(cfg: Config) -> bytes:
    """msgpack bytes that :func:`loads` turns back into the same Config
    (how the supervisor hands its config to child processes)."""
    return msgspec.msgpack.encode(cfg)


def loads(data: bytes) -> Config:
    return msgspec.msgpack.decode(data, type=Config)


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message is one line."""


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """(key, type, default, description) for every key, sections flattened."""
    out = []
    info = msgspec.inspect.type_info(cls)
    for f in info.fields:
        t = f.type
        desc = ""
        if isinstance(t, msgspec.inspect.Metadata):
            desc = (t.extra_json_schema or {}).get("description", "")
            t = t.type
        if isinstance(t, msgspec.inspect.StructType):
            out.extend(describe(t.cls, f"{prefix}{f.name}."))
            continue
        out.append((prefix + f.name, _type_name(t), f.default, desc))
    return out


def _type_name(t) -> str:
    # " \\| ": escaped, since these names go into a Markdown table
    if isinstance(t, msgspec.inspect.LiteralType):
        return " \\| ".join(repr(v) for v in t.values)
    if isinstance(t, msgspec.inspect.UnionType):
        return " \\| ".join(_type_name(u) for u in t.types)
    if isinstance(t, msgspec.inspect.Metadata):
        return _type_name(t.type)
    return type(t).__name__.removesuffix("Type").lower()


def render_docs() -> str:
    lines = [
        "# Configuration",
        "",
        "Every key, its default and what it does. Generated by `hpbroker config docs`;",
        "a test fails when this file and `hpbroker/config.py` disagree.",
        "",
        "Keys live in TOML tables named after their section, e.g.",
        "",
        "```toml",
        "[log]",
        'flush_mode = "durable"',
        "```",
        "",
        "Unknown keys are rejected with an error naming them.",
        "",
    ]
    section = None
    for key, typ, default, desc in describe():
        sec = key.rsplit(".", 1)[0] if "." in key else ""
        if sec != section:
            section = sec
            lines += ["", f"## [{sec}]" if sec else "## top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines.append(f"| `{key}` | {typ} | `{default!r}` | {desc} |")
    return "\n".join(lines) + "\n"
