"""Each broker child names its role in its process title and comm."""

from __future__ import annotations

from pathlib import Path

from brokerproc import BrokerProcess

from hpbroker.bench._e2e_broker import remote_processes


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_children_are_named_by_role_and_found_by_it(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--writers", "2", "--role", "master")).start()
    try:
        procs = remote_processes(b.url)
        assert set(procs) == {"supervisor", "writer0", "writer1", "replicator", "acceptor0", "scrubber"}
        assert procs["supervisor"].pid == b.pid
        instance = f"p{b.port}"
        for role, p in procs.items():
            if role == "supervisor":
                continue
            assert " ".join(p.cmdline()).strip() == f"hpbroker: {role} ({instance})"
            assert _comm(p.pid) == f"hpb-{role}"[:15]
    finally:
        assert b.stop() == 0
