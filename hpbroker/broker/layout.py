"""Where each process and ring goes: cores, NUMA nodes, CPU affinity.

The topology comes from psutil and /sys/devices/system/node (passed in as a
directory so tests can feed any layout).  Writers take cores from the last
one down, acceptors from the first one up, so on a two-core machine each
gets a core of its own; each ring lives on the NUMA node of its writer,
the side that reads every byte of it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil

NODE_DIR = Path("/sys/devices/system/node")


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]"""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def numa_nodes(node_dir: Path = NODE_DIR) -> dict[int, list[int]]:
    """NUMA node -> its CPUs; one node 0 with every usable CPU when the
    kernel exposes none."""
    nodes: dict[int, list[int]] = {}
    if node_dir.is_dir():
        for d in sorted(node_dir.glob("node[0-9]*")):
            try:
                nodes[int(d.name[4:])] = parse_cpulist((d / "cpulist").read_text())
            except (OSError, ValueError):
                continue
    if not nodes:
        nodes = {0: sorted(usable_cpus())}
    return nodes


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return list(range(psutil.cpu_count() or 1))


@dataclass
class Placement:
    role: str
    index: int
    cpus: list[int] | None  # None = not pinned
    node: int | None


@dataclass
class Plan:
    cpus: list[int]
    nodes: dict[int, list[int]]
    physical_cores: int | None
    processes: list[Placement] = field(default_factory=list)
    rings: list[tuple[int, int, int | None]] = field(default_factory=list)  # (acceptor, writer, node)

    def placement(self, role: str, index: int) -> Placement:
        for p in self.processes:
            if p.role == role and p.index == index:
                return p
        raise KeyError((role, index))


def node_of(cpu: int, nodes: dict[int, list[int]]) -> int | None:
    for n, cpus in nodes.items():
        if cpu in cpus:
            return n
    return None


def plan(broker_cfg, node_dir: Path = NODE_DIR, cpus: list[int] | None = None) -> Plan:
    cpus = sorted(cpus if cpus is not None else usable_cpus())
    nodes = numa_nodes(node_dir)
    p = Plan(cpus=cpus, nodes=nodes, physical_cores=psutil.cpu_count(logical=False))
    pin = broker_cfg.cpu_affinity == "auto"

    def pick(explicit: list[int], i: int, auto_cpu: int) -> list[int] | None:
        if i < len(explicit):
            return [explicit[i]]
        return [auto_cpu] if pin else None

    n_acc, n_wr = broker_cfg.acceptors, broker_cfg.writers
    for w in range(n_wr):
        c = pick(broker_cfg.writer_cpus, w, cpus[-1 - (w % len(cpus))])
        p.processes.append(Placement("writer", w, c, node_of(c[0], nodes) if c else None))
    for a in range(n_acc):
        c = pick(broker_cfg.acceptor_cpus, a, cpus[a % len(cpus)])
        p.processes.append(Placement("acceptor", a, c, node_of(c[0], nodes) if c else None))
    for a in range(n_acc):
        for w in range(n_wr):
            p.rings.append((a, w, p.placement("writer", w).node))
    return p


def pin(cpus: list[int] | None) -> None:
    """Pin the calling process (no-op for None)."""
    if cpus:
        psutil.Process().cpu_affinity(cpus)


def render(p: Plan, instance: str) -> str:
    lines = [
        f"cpus usable: {','.join(map(str, p.cpus))}  (physical cores: {p.physical_cores})",
        "numa nodes:  " + "; ".join(f"node{n}: {','.join(map(str, c))}" for n, c in p.nodes.items()),
        "",
        f"{'process':<14}{'cpus':<10}node",
    ]
    lines.append(f"{'supervisor':<14}{'any':<10}-")
    for pl in p.processes:
        cpus = ",".join(map(str, pl.cpus)) if pl.cpus else "any"
        lines.append(f"{pl.role + ' ' + str(pl.index):<14}{cpus:<10}{'-' if pl.node is None else pl.node}")
    lines += ["", f"{'ring':<28}{'producer':<12}{'consumer':<10}node"]
    for a, w, node in p.rings:
        lines.append(f"{'/hpb.' + instance + '.' + ring_name(a, w):<28}{'acceptor ' + str(a):<12}{'writer ' + str(w):<10}{'-' if node is None else node}")
    return "\n".join(lines)


def ring_name(acceptor: int, writer: int) -> str:
    """The ring's name within its instance (shared memory ``/hpb.<instance>.<name>``)."""
    return f"a{acceptor}w{writer}"


@contextlib.contextmanager
def running_on(cpus: list[int] | None):
    """Run the body pinned to ``cpus`` (e.g. to first-touch memory on a NUMA
    node), then restore the previous affinity."""
    if not cpus:
        yield
        return
    proc = psutil.Process()
    before = proc.cpu_affinity()
    proc.cpu_affinity(cpus)
    try:
        yield
    finally:
        proc.cpu_affinity(before)
