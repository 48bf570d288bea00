"""The broker's own durable state, in ``<data_dir>/broker-state.json``: the
leader epoch, the reigns (epochs) this broker led or followed, and whether
it was promoted.

A master takes a new epoch at every start and at promotion, so batches of
different reigns never share one; a slave remembers the newest epoch it has
seen from a master, so a promotion always moves past it.  Written as temp
file, fsync, rename, fsync of the directory (:meth:`FileSystem.write_atomic`);
a failed write raises ``OSError`` and leaves the old file.

Epochs are owned: broker ``id`` only ever takes epochs ``e`` with
``e % EPOCH_STRIDE == id`` (:func:`next_epoch`).  Without a coordinator two
brokers can each believe they are master - a promoted slave, and its old
master restarted with its old flags - and each takes "the next" epoch.
Were both the same number, their batches would share an epoch, and
truncation by epoch (which trusts that an epoch names one master's
history) would keep a divergent tail: the replicas would differ in the
middle, silently.  With owned epochs they never coincide, and whichever
log is cut back later is cut at the right offset.

The reigns say whose history this broker's log is.  A master sends them in
its handshake; a slave holding batches of an epoch its master never led
nor followed knows those were acknowledged by a master this one never heard
of (a split brain), and does not cut them without being told to
(``replication.unclean_truncation``; docs/replication.md, "Two masters").

=============  ======================================================
key            value
=============  ======================================================
epoch          int: the newest epoch this broker led or saw from a master
reigns         sorted list of int: every epoch it led or followed
promoted_from  str, only after ``hpbroker promote``: the master URL this
               broker followed until then.  A restart with the same slave
               flags keeps it master (:mod:`hpbroker.broker.role`); gone
               once it starts as a slave again or as a master by its flags
=============  ======================================================
"""

from __future__ import annotations

import json
from pathlib import Path

from hpbroker.io.fs import FileSystem

NAME = "broker-state.json"
EPOCH_STRIDE = 1024  # broker ids are 0..EPOCH_STRIDE-1 (BrokerConfig.broker_id)


def next_epoch(seen: int, broker_id: int) -> int:
    """The smallest epoch above ``seen`` that broker ``broker_id`` owns."""
    e = seen + 1
    return e + (broker_id - e) % EPOCH_STRIDE


def _read(data_dir: Path) -> dict:
    try:
        return json.loads((Path(data_dir) / NAME).read_text())
    except FileNotFoundError:
        return {}


def load_epoch(data_dir: Path) -> int:
    return int(_read(data_dir).get("epoch", 0))


def load_reigns(data_dir: Path) -> set[int]:
    """Every epoch this broker led or followed.  A state file written before
    reigns were kept yields its epoch and every epoch a partition holds."""
    state = _read(data_dir)
    if "reigns" in state:
        return {int(e) for e in state["reigns"]}
    reigns = {int(state["epoch"])} if state.get("epoch") else set()
    return reigns | partition_epochs(data_dir)


def load_promoted_from(data_dir: Path) -> str | None:
    """The master URL this broker followed when it was promoted, if it was
    promoted and has not started as a slave or by its flags since."""
    return _read(data_dir).get("promoted_from") or None


_KEEP = object()


def save_epoch(data_dir: Path, epoch: int, reigns: set[int] | None = None, promoted_from=_KEEP,
               fs: FileSystem | None = None) -> None:
    """Write the state (``reigns`` None: keep the recorded ones;
    ``promoted_from`` left out: keep it, None: clear it).  ``epoch`` is not
    added to the reigns: a master's epoch a slave has only seen (and refused
    to follow) is no reign of its own."""
    path = Path(data_dir) / NAME
    known = load_reigns(data_dir) if reigns is None else set(reigns)
    state = {"epoch": epoch, "reigns": sorted(known)}
    promoted = load_promoted_from(data_dir) if promoted_from is _KEEP else promoted_from
    if promoted:
        state["promoted_from"] = promoted
    (fs or FileSystem()).write_atomic(path, json.dumps(state).encode())


def partition_epochs(data_dir: Path) -> set[int]:
    """Every epoch some partition's leader-epoch checkpoint names."""
    from hpbroker.io.epochs import EpochCache
    from hpbroker.io.layout import list_partitions, partition_dir

    out: set[int] = set()
    for topic, p in list_partitions(str(data_dir)):
        out.update(e for e, _ in EpochCache(partition_dir(str(data_dir), topic, p), 1 << 62).entries)
    return out


def max_partition_epoch(data_dir: Path) -> int:
    """The newest epoch any partition's leader-epoch checkpoint names."""
    return max(partition_epochs(data_dir), default=-1)
