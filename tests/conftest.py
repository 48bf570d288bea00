"""Shared fixtures: a real broker process, and the /dev/shm leak check."""

from __future__ import annotations

import os

import pytest

from brokerproc import BrokerProcess

SHM = "/dev/shm"


def _hpb_shm() -> set[str]:
    try:
        return {n for n in os.listdir(SHM) if n.startswith(("hpb.", "sem.hpb."))}
    except FileNotFoundError:
        return set()


@pytest.fixture(scope="session", autouse=True)
def no_shm_leaks():
    """The whole suite must leave nothing of its own in /dev/shm."""
    before = _hpb_shm()
    yield
    leaked = _hpb_shm() - before
    assert not leaked, f"shared-memory objects left behind by the tests: {sorted(leaked)}"


@pytest.fixture
def broker(tmp_path):
    """A standalone broker on a free loopback port, topics auto-created
    with 4 partitions; stopped (SIGTERM, then the process group killed) at
    the end of the test."""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4"))
    b.start()
    try:
        yield b
    finally:
        b.stop()
