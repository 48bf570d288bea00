"""Partition ownership: which writer process appends a partition."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hpbroker.ipc.handoff import owner_of


@pytest.mark.parametrize("writers", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("topic", ["rep", "bench", "logs", "a", "orders-eu", "bench-e2e-1234-5678"])
def test_consecutive_partitions_land_on_distinct_writers(topic, writers):
    owners = [owner_of(topic, p, writers) for p in range(4 * writers)]
    assert all(0 <= o < writers for o in owners)
    for start in range(len(owners) - writers + 1):
        assert len(set(owners[start : start + writers])) == writers, (topic, owners)


def test_ownership_is_the_same_in_every_process():
    """Acceptors, writers and the slave's replicator compute it separately:
    it must not depend on Python's per-process hash salt."""
    code = "from hpbroker.ipc.handoff import owner_of; print([owner_of('t%d' % i, p, 3) for i in range(5) for p in range(6)])"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"}).stdout for seed in (1, 2)}
    assert len(runs) == 1
    assert runs.pop().strip() == str([owner_of(f"t{i}", p, 3) for i in range(5) for p in range(6)])
