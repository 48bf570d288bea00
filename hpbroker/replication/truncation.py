"""Truncation by epoch at a handshake: what a slave asks, and what it cuts.

For each local partition with an epoch, the slave asks the master where its
latest epoch ends there (``EpochEnd``), and :func:`plan` turns the answers
into cuts (:func:`hpbroker.replication.divergence.plan_cut`, one partition
at a time).  A master that cannot answer for a partition (a damaged
checkpoint, a fenced partition) leaves that partition alone: corruption on
one replica is never spread to the other by truncation.  A cut of batches
that a master the new one never led nor followed acknowledged is unclean,
and is refused for all partitions or none unless
``replication.unclean_truncation`` allows it (:func:`refusal` says why).

:func:`plan` is pure; :func:`local_epochs` reads the partitions' epoch
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpbroker.io.epochs import EpochCache
from hpbroker.io.layout import partition_dir
from hpbroker.ipc import handoff
from hpbroker.replication.divergence import plan_cut


@dataclass
class Plan:
    cuts: list[tuple[str, int, int]] = field(default_factory=list)  # (topic, partition, cut the log here)
    unclean: list[str] = field(default_factory=list)  # what the unclean cuts would delete, one line each
    unanswered: list[tuple[str, str]] = field(default_factory=list)  # (partition, the master's error)


def local_epochs(data_dir: str, expected: dict[str, int]) -> dict[str, EpochCache]:
    """The epochs of each local partition that has any, its log ending at ``expected``."""
    caches = {}
    for key in sorted(expected):
        topic, _, p = key.rpartition("/")
        cache = EpochCache(partition_dir(str(data_dir), topic, int(p)), expected[key])
        if cache.latest_epoch >= 0:
            caches[key] = cache
    return caches


def asks(caches: dict[str, EpochCache]) -> list[tuple[str, int, int]]:
    """The EpochEnd question: (topic, partition, latest epoch) of each partition."""
    out = []
    for key, cache in caches.items():
        topic, _, p = key.rpartition("/")
        out.append((topic, int(p), cache.latest_epoch))
    return out


def plan(answers, caches: dict[str, EpochCache], expected: dict[str, int], master_reigns: set[int]) -> Plan:
    """The cuts for the master's ``answers`` (topic, partition, epoch found,
    its end, error) given the local ``caches``, log ends and the master's reigns."""
    out = Plan()
    for topic, p, found, end, err in answers:
        key = handoff.tp_key(topic, p)
        if err:
            out.unanswered.append((key, err))
            continue
        exp = expected.get(key, 0)
        cut = plan_cut(caches[key].entries, exp, found, end, master_reigns)
        if cut.unclean:
            out.unclean.append(f"{key}: offsets {cut.offset}..{exp - 1} (epoch {', '.join(map(str, cut.strangers))})")
        if cut.offset < exp:
            out.cuts.append((topic, p, cut.offset))
    return out


def refusal(master: str, unclean: list[str]) -> str:
    return (f"not following {master}: it never led nor followed epochs this broker holds "
            f"batches of, so following it would delete messages a master it never heard of acknowledged - "
            f"{'; '.join(unclean)}. To discard them, set replication.unclean_truncation = true here; to keep "
            f"them, promote this broker (hpbroker promote) and restart the other as its slave with "
            f"replication.unclean_truncation = true there (docs/replication.md, \"Two masters\")")
