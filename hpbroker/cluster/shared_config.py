"""Settings shared by a cluster, kept in ZooKeeper at ``/meta/config/cluster``.

A cluster's brokers should agree on topic defaults, retention, flush and
group settings; MetaQ kept its brokers' config checksums in ZooKeeper so an
operator could see which one differed.  Here the shared settings
themselves live there, as TOML in the broker config's own form
(:class:`~hpbroker.cluster.paths.SharedConfig`: the text and a version that
counts pushes):

* ``hpbroker cluster config push FILE`` checks the TOML (every key must be
  a config key, and none may be one of a single broker's own, listed in
  :data:`PER_BROKER`) and writes it with the next version;
* ``hpbroker serve`` in cluster mode reads it at start and takes it as the
  base under its own TOML file and flags: a key the broker sets itself
  wins, and the broker says so, key by key;
* the broker registers the version it runs (``BrokerNode.config_version``)
  and, as MetaQ, ``master_config_checksum``; a broker running an older
  version than the one in ZooKeeper says so in its log and in ``hpbroker
  cluster status``; a restart applies the new one.

Sans-IO but for the functions that take a started kazoo client.
"""

from __future__ import annotations

import zlib

import msgspec

from hpbroker.cluster import paths

#: keys that belong to one broker, never to the cluster (section -> keys; "*" = the whole section)
PER_BROKER: dict[str, tuple[str, ...]] = {
    "broker": ("data_dir", "port", "bind", "acceptor_ports", "instance", "broker_id", "acceptors", "writers",
               "cpu_affinity"),
    "replication": ("role", "master", "pub_port", "fetch_port", "ack_port", "acceptor_ack_port"),
    "cluster": ("*",),
    "security": ("server_secret_key_file", "master_public_key"),
    "http": ("port", "bind"),
    "text_protocol": ("port", "bind"),
}


class SharedConfigError(ValueError):
    """A shared config that cannot be used; the message is one line."""


def check(text: bytes, where: str = "shared config") -> dict:
    """The TOML ``text`` decoded, once it is a valid cluster config: a
    SharedConfigError naming ``where`` and the key otherwise."""
    from hpbroker.config import Config

    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as e:
        raise SharedConfigError(f"{where}: {e}") from None
    for section, keys in raw.items():
        if not isinstance(keys, dict):
            raise SharedConfigError(f"{where}: {section} is not a [section]")
        own = PER_BROKER.get(section, ())
        for k in keys:
            if "*" in own or k in own:
                raise SharedConfigError(f"{where}: {section}.{k} belongs to each broker, not to the cluster; "
                                        "set it in the broker's own config file or flags")
    try:
        msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise SharedConfigError(f"{where}: {e}") from None
    return raw


def overridden(shared: dict, local: dict) -> list[str]:
    """The ``section.key`` names that ``local`` (the broker's own file and
    flags, decoded) sets to something else than ``shared``."""
    return sorted(f"{s}.{k}" for s, keys in local.items() if isinstance(keys, dict)
                  for k, v in keys.items() if k in (shared.get(s) or {}) and shared[s][k] != v)


def checksum(cfg) -> int:
    """MetaQ's ``master_config_checksum``: a CRC32 of the effective config."""
    from hpbroker.config import dumps

    return zlib.crc32(dumps(cfg)) & 0x7FFFFFFF


def push(zk, text: bytes, where: str = "shared config") -> int:
    """Check ``text`` and make it the cluster's shared config: -> its new version."""
    check(text, where)
    zk.ensure_path(paths.parent(paths.SHARED_CONFIG))
    while True:
        cur = read(zk)
        version = 1 if cur is None else cur[0].version + 1
        data = paths.encode(paths.SharedConfig(version=version, toml=text.decode("utf-8")))
        try:
            if cur is None:
                zk.create(paths.SHARED_CONFIG, data)
            else:
                zk.set(paths.SHARED_CONFIG, data, version=cur[1])  # two pushes at once: one retries
            return version
        except Exception as e:  # noqa: BLE001 - kazoo's NodeExistsError / BadVersionError: read again
            if type(e).__name__ not in ("NodeExistsError", "BadVersionError"):
                raise


def read(zk) -> tuple[paths.SharedConfig, int] | None:
    """(the shared config, its znode version) or None when there is none."""
    if zk.exists(paths.SHARED_CONFIG) is None:
        return None
    data, stat = zk.get(paths.SHARED_CONFIG)
    return paths.decode(data, paths.SharedConfig), stat.version


def fetch(hosts: str, timeout_s: float = 15.0) -> paths.SharedConfig | None:
    """The shared config of the cluster at ``hosts`` (a short-lived session,
    at a broker's start); ConnectionError when ZooKeeper cannot be reached."""
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=hosts, timeout=timeout_s)
    try:
        zk.start(timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - kazoo's timeout
        zk.close()
        raise ConnectionError(f"cannot reach ZooKeeper at {hosts}: {e}") from None
    try:
        got = read(zk)
        return None if got is None else got[0]
    finally:
        zk.stop()
        zk.close()
