"""The broker's own durable state: the leader epoch, in ``<data_dir>/broker-state.json``.

A master takes a new epoch at every start and at promotion, so batches of
different reigns never share one; a slave remembers the newest epoch it has
seen from a master, so a promotion always moves past it.  Written as temp
file, fsync, rename, fsync of the directory.

Epochs are owned: broker ``id`` only ever takes epochs ``e`` with
``e % EPOCH_STRIDE == id`` (:func:`next_epoch`).  Without a coordinator two
brokers can each believe they are master - a promoted slave, and its old
master restarted with its old flags - and each takes "the next" epoch.
Were both the same number, their batches would share an epoch, and
truncation by epoch (which trusts that an epoch names one master's
history) would keep a divergent tail: the replicas would differ in the
middle, silently.  With owned epochs they never coincide, and whichever
log is cut back later is cut at the right offset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

NAME = "broker-state.json"
EPOCH_STRIDE = 1024  # broker ids are 0..EPOCH_STRIDE-1 (BrokerConfig.broker_id)


def next_epoch(seen: int, broker_id: int) -> int:
    """The smallest epoch above ``seen`` that broker ``broker_id`` owns."""
    e = seen + 1
    return e + (broker_id - e) % EPOCH_STRIDE


def load_epoch(data_dir: Path) -> int:
    try:
        return int(json.loads((Path(data_dir) / NAME).read_text())["epoch"])
    except FileNotFoundError:
        return 0


def save_epoch(data_dir: Path, epoch: int) -> None:
    path = Path(data_dir) / NAME
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps({"epoch": epoch}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def max_partition_epoch(data_dir: Path) -> int:
    """The newest epoch any partition's leader-epoch checkpoint names."""
    from hpbroker.io.epochs import EpochCache
    from hpbroker.io.layout import list_partitions, partition_dir

    best = -1
    for topic, p in list_partitions(str(data_dir)):
        best = max(best, EpochCache(partition_dir(str(data_dir), topic, p), 1 << 62).latest_epoch)
    return best
