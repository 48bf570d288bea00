"""``hpbroker serve``: run a broker in the foreground.

With no flags it serves on tcp://127.0.0.1:7600 with a data directory
``./hpbroker-data``, auto-created topics and no other service.  SIGTERM or
Ctrl-C drains in-flight batches, fsyncs and exits 0.
"""

from __future__ import annotations

import logging

from hpbroker import config
from hpbroker.commands import UserError


def register(sub) -> None:
    p = sub.add_parser("serve", help="run a broker in the foreground (embedded defaults without flags)")
    p.add_argument("--config", metavar="FILE", help="TOML config file (see docs/config.md)")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (broker.data_dir)")
    p.add_argument("--port", type=int, help="bootstrap client port (broker.port, default 7600)")
    p.add_argument("--bind", metavar="ADDR", help="listen address (broker.bind, default 127.0.0.1)")
    p.add_argument("--acceptors", type=int, metavar="N", help="acceptor processes (broker.acceptors)")
    p.add_argument("--writers", type=int, metavar="M", help="writer processes (broker.writers)")
    p.add_argument("--partitions", type=int, metavar="N", help="partitions of auto-created topics (broker.default_partitions)")
    p.add_argument("--flush-mode", choices=["durable", "async"], help="log.flush_mode")
    p.add_argument("--cpu-affinity", choices=["auto", "off"], help="broker.cpu_affinity")
    p.add_argument("--role", choices=["standalone", "master", "slave"], help="replication.role")
    p.add_argument("--master", metavar="URL", help="replication.master: the master's client URL (with --role slave)")
    p.add_argument("--replication-mode", choices=["sync", "async"], help="replication.mode")
    p.add_argument("--broker-id", type=int, metavar="N", help="broker.broker_id")
    p.add_argument("--cluster-id", metavar="NAME", help="broker.cluster_id")
    p.add_argument("--http-port", type=int, metavar="N",
                   help="HTTP port for /metrics, /healthz, /readyz, the gateway and the dashboard (http.port; "
                        "default: the client port + 80, i.e. 7680; 0 turns it off)")
    p.add_argument("--text-port", type=int, metavar="N",
                   help="MetaQ text protocol port (text_protocol.port; default broker port + 523, i.e. 8123; 0 = off)")
    p.add_argument("--text-processes", type=int, metavar="N",
                   help="text listener processes sharing the text port (text_protocol.processes, default 1)")
    p.add_argument("--zookeeper", metavar="HOST:PORT[,...][/chroot]",
                   help="cluster mode: register in this ZooKeeper, find the master there, fail over by itself "
                        "(cluster.zookeeper; docs/cluster.md)")
    p.add_argument("--replica-set", type=int, metavar="N",
                   help="cluster mode: the replica set (MetaQ broker id) this broker serves (cluster.replica_set; "
                        "default: its broker id)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = dict(
        broker__data_dir=args.data_dir,
        broker__port=args.port,
        broker__bind=args.bind,
        broker__acceptors=args.acceptors,
        broker__writers=args.writers,
        broker__default_partitions=args.partitions,
        broker__cpu_affinity=args.cpu_affinity,
        log__flush_mode=args.flush_mode,
        replication__role=args.role,
        replication__master=args.master,
        replication__mode=args.replication_mode,
        broker__broker_id=args.broker_id,
        broker__cluster_id=args.cluster_id,
        http__port=args.http_port,
        text_protocol__port=args.text_port,
        text_protocol__processes=args.text_processes,
        cluster__zookeeper=args.zookeeper,
        cluster__replica_set=args.replica_set,
    )
    try:
        cfg = config.load(args.config, **overrides)
    except config.ConfigError as e:
        raise UserError(str(e)) from None
    logging.basicConfig(level=args.log_level, format="%(asctime)s supervisor %(levelname)s %(message)s")
    if cfg.cluster.zookeeper:
        try:
            import kazoo  # noqa: F401
        except ImportError:
            raise UserError("cluster mode (cluster.zookeeper) needs kazoo: pip install 'hpbroker[cluster]'") from None
        cfg = _with_shared_settings(cfg, args.config, overrides)
    from hpbroker import security

    try:
        security.check(cfg.security, cfg.replication.role)  # keys and ACL readable before anything starts
    except ValueError as e:
        raise UserError(f"security: {e}") from None
    from hpbroker.broker import supervisor

    return supervisor.run(cfg)


def _with_shared_settings(cfg, path, overrides):
    """Cluster mode: the cluster's shared settings from ZooKeeper as the base
    under this broker's file and flags (hpbroker/cluster/shared_config.py);
    each key the broker sets otherwise is logged."""
    from hpbroker.cluster import paths, shared_config

    try:
        shared = shared_config.fetch(cfg.cluster.zookeeper, cfg.cluster.session_timeout_ms / 1000 + 10)
    except ConnectionError as e:
        raise UserError(str(e)) from None
    if shared is None:
        logging.info("cluster: no shared settings in ZooKeeper (%s): this broker's own file and flags only",
                     paths.SHARED_CONFIG)
        return cfg
    where = f"ZooKeeper {paths.SHARED_CONFIG} (version {shared.version})"
    try:
        base = shared_config.check(shared.toml.encode(), where)
        cfg = config.load(path, base=base, cluster__config_version=shared.version, **overrides)
    except (shared_config.SharedConfigError, config.ConfigError) as e:
        raise UserError(f"the cluster's shared settings cannot be used: {e}") from None
    local = config.with_overrides(config.read_toml(path), overrides)
    differ = shared_config.overridden(base, local)
    logging.info("cluster: running the shared settings of version %d%s", shared.version,
                 f"; this broker sets {len(differ)} of them itself" if differ else "")
    for key in differ:
        section, _, k = key.partition(".")
        logging.warning("cluster: %s = %r here, not the cluster's %r (shared settings version %d)", key,
                        local[section][k], base[section][k], shared.version)
    return cfg
