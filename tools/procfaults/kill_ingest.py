"""The kill -9 sweep: kill a broker at a random moment of acknowledged
ingest, restart it, and check the log against every acknowledgement.

One cycle, standalone (:func:`run_standalone`):

1. 1-4 client processes (``ingest_writer.py``) send pipelined batches of
   random sizes with a mix of acks=1 and acks=all, each answer reported on
   their stdout as it arrives, to the long-lived topic ``sweep`` or, in a
   quarter of the cycles, to a topic their first request creates;
2. after a random 0.05-1.5 s, kill -9 one target: the broker's whole
   process group (most cycles), or only its writer0, acceptor0 or
   supervisor (``--targets``); a single child's death stops the broker by
   itself, and the sweep then kills whatever is left;
3. count the /dev/shm objects the instance left, and, for a writer or an
   acceptor, how long until the other side logged that it noticed;
4. restart on the same data directory (1-2 writers and acceptors, drawn
   again), timing start-to-ready, and check the log (:mod:`.ledger`):
   acknowledged records lost, duplicates, offset gaps.

Every ``full_every`` cycles, and at the end, the whole log is checked from
offset 0, and the broker is stopped cleanly and started once more: that
start is the baseline the recovery times are compared with.

With a failover (:func:`run_failover`), a sync master and its slave: the
clients write to the master, the master's process group is killed, the
slave is promoted (``hpbroker promote``), the log is checked there, and the
old master comes back as the new master's slave; the next cycle kills the
new master.  At each full check the slave is also stopped cleanly and
started again: the baseline of its restart time.  acks=all records must all be on the promoted slave; acks=1
records are durable on the master only when acknowledged (docs/design.md,
durability contract; docs/replication.md, sync), so the ones a failover
loses are counted apart (``lost_one``), not as defects.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from procfaults.common import (BrokerProcess, data_root, env, free_port, hpbroker, kill_group, kill_pid, log_time,
                               progress, shm_objects, stats, summary, wait_until)
from procfaults.ledger import COUNTS, Acked, Ledger

TOPIC = "sweep"
PARTITIONS = 4
NEW_TOPIC_SHARE = 0.25
WRITER = Path(__file__).with_name("ingest_writer.py")
TARGETS = {"group": 0.7, "writer": 0.1, "acceptor": 0.1, "supervisor": 0.1}
NOTICE = {  # what the other side logs when it notices the target's death
    "writer": r"writer0 \(pid \d+\) died with signal 9",
    "acceptor": r"acceptor ring producer died",
}


class Clients:
    """1-4 ingest_writer processes for one cycle, their answers read as they come."""

    def __init__(self, url: str, cycle: int, n: int, rnd: random.Random, ledger: Ledger):
        self.cycle = cycle
        # most cycles write to one long-lived topic; some to a topic of their own, created by their first
        # request (a new topic must be as safe as an old one, on a slave too)
        self.topic = ledger.topic(TOPIC if rnd.random() >= NEW_TOPIC_SHARE else f"{TOPIC}-c{cycle}")
        self.lines: list[list[str]] = [[] for _ in range(n)]
        self.procs = []
        self.threads = []
        for w in range(n):
            seed = rnd.randrange(1 << 30)
            ledger.seeds[(cycle, w)] = seed
            p = subprocess.Popen([sys.executable, str(WRITER), url, self.topic, str(PARTITIONS), str(cycle), str(w),
                                  str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
            self.procs.append(p)
            t = threading.Thread(target=self._read, args=(p, self.lines[w]), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _read(p, out: list[str]) -> None:
        for line in p.stdout:
            out.append(line)

    def ready(self, timeout: float = 30) -> None:
        wait_until(lambda: all(ls and ls[0].startswith("R") for ls in self.lines), timeout, "the clients to connect")

    def finish(self, timeout: float = 20) -> list[Acked]:
        """Wait for every client to see the broker gone (or kill it); -> what they were acknowledged."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self.threads:
            t.join(5)
        for p in self.procs:
            p.stdin.close()
            p.stdout.close()
        acked = []
        for w, lines in enumerate(self.lines):
            for line in lines:
                f = line.split()
                if f and f[0] == "A":
                    p, base, n, first, acks = map(int, f[1:6])
                    acked.append(Acked(self.topic, p, base, n, self.cycle, w, first, acks))
        return acked

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        self.finish(5)


def _config(root: Path, replicated: bool) -> str:
    p = root / ("failover.toml" if replicated else "standalone.toml")
    text = "[log]\nsegment_bytes = 8388608\n"  # several rolls over a run
    if replicated:
        text += ('[replication]\nmode = "sync"\nreplica_lag_max_ms = 3000\nack_interval_ms = 50\n'
                 "promote_probe_ms = 300\n")
    p.write_text(text)
    return str(p)


def _start(data: Path, port: int, cfg: str, rnd: random.Random, extra=()) -> tuple[BrokerProcess, float]:
    args = ("--config", cfg, "--partitions", str(PARTITIONS), "--writers", str(rnd.randint(1, 2)),
            "--acceptors", str(rnd.randint(1, 2)), *extra)
    t0 = time.monotonic()
    b = BrokerProcess(data, port=port, args=args).start(timeout=120)
    return b, time.monotonic() - t0


def _collect(b: BrokerProcess, target: str, t_kill: float) -> tuple[int, float | None]:
    """After a kill: wait for the broker to be gone, kill what is left of its
    group; -> (shm objects the instance left, seconds until the other side noticed)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _group_alive(b):  # a single child's death stops the rest by itself
        time.sleep(0.05)
        b.proc.poll()
    kill_group(b)
    b.proc.wait(10)
    b._reap_group()
    left = len(shm_objects(f"p{b.port}"))
    notice = None
    if target in NOTICE:
        t = log_time(b.log(), NOTICE[target], t_kill)
        notice = None if t is None else t - t_kill
    b.stop()  # closes its log; unlinks what a dead owner left (counted above)
    return left, notice


def _log_events(logs: list[Path]) -> dict:
    """What the brokers' recoveries logged over the run: torn tails cut, partitions fenced."""
    text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
    return dict(torn_tails_truncated=len(re.findall(r"truncating a torn tail", text)),
                partitions_fenced=len(re.findall(r"is fenced", text)))


def _group_alive(b: BrokerProcess) -> bool:
    try:
        os.killpg(b.proc.pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class Totals:
    def __init__(self):
        self.counts = dict.fromkeys(COUNTS, 0)
        self.acked_records = self.acked_all_records = self.acked_requests = self.cycles = 0
        self.restart: list[float] = []
        self.baseline: list[float] = []
        self.notice: dict[str, list[float]] = {}
        self.targets: dict[str, int] = {}
        self.shm_left = 0
        self.promote: list[float] = []
        self.resync: list[float] = []
        self.kill_after: list[float] = []

    def add(self, c: dict) -> None:
        for k, v in c.items():
            self.counts[k] += v

    def report(self) -> dict:
        out = dict(self.counts, cycles=self.cycles, acked_records=self.acked_records, acked_all_records=self.acked_all_records,
                   acked_requests=self.acked_requests, shm_objects_left=self.shm_left, targets=self.targets,
                   restart_s=sorted(self.restart), baseline_start_s=sorted(self.baseline),
                   notice_s={k: sorted(v) for k, v in self.notice.items()}, kill_after_s=sorted(self.kill_after))
        if self.promote:
            out.update(promote_s=sorted(self.promote), resync_s=sorted(self.resync))
        return out


def run_standalone(cycles: int, seed: int = 1, root: str | None = None, targets: dict | None = None,
                   max_writers: int = 4, full_every: int = 25, say=progress) -> dict:
    rnd = random.Random(seed)
    targets = targets or TARGETS
    base = data_root(root, "kill-ingest")
    cfg = _config(base, replicated=False)
    data, port = base / "data", free_port()
    ledger, tot = Ledger(PARTITIONS, seed), Totals()
    b, first = _start(data, port, cfg, rnd)
    tot.baseline.append(first)
    try:
        for cycle in range(1, cycles + 1):
            clients = Clients(b.url, cycle, rnd.randint(1, max_writers), rnd, ledger)
            try:
                clients.ready()
            except TimeoutError:
                clients.kill()
                raise
            after = rnd.uniform(0.05, 1.5)
            time.sleep(after)
            target = rnd.choices(list(targets), weights=list(targets.values()))[0]
            if target == "group":
                t_kill = kill_group(b)
            else:
                name = {"writer": "writer0", "acceptor": "acceptor0"}.get(target)
                t_kill = kill_pid(b.child_pid(name) if name else b.pid)
            left, notice = _collect(b, target, t_kill)
            acked = clients.finish()
            ledger.add(acked)
            b, restart = _start(data, port, cfg, rnd)
            full = cycle % full_every == 0 or cycle == cycles
            c = ledger.check(b.url, acked, cycle, full=full)
            tot.add(c)
            tot.cycles += 1
            tot.acked_records += sum(a.n for a in acked)
            tot.acked_all_records += sum(a.n for a in acked if a.acks == -1)
            tot.acked_requests += len(acked)
            tot.restart.append(restart)
            tot.kill_after.append(after)
            tot.shm_left += left
            tot.targets[target] = tot.targets.get(target, 0) + 1
            if notice is not None:
                tot.notice.setdefault(target, []).append(notice)
            say(f"cycle {cycle}/{cycles}: {len(clients.procs)} client(s) on {clients.topic}, kill -9 {target} after {after:.2f} s, "
                f"{sum(a.n for a in acked)} records acked ({sum(1 for a in acked if a.acks == -1)} acks=all / "
                f"{sum(1 for a in acked if a.acks == 1)} acks=1 requests); restart {restart:.2f} s; "
                f"lost {c['lost_all'] + c['lost_one']} dup {c['dup']} gaps {c['gaps']} regressed {c['regressed']} "
                f"bad {c['bad']}; shm left {left}" + (f"; noticed in {notice:.3f} s" if notice is not None else "")
                + (" [full check]" if full else ""))
            if full and cycle < cycles:  # the baseline: a clean stop, the same start
                b.stop()
                b, clean = _start(data, port, cfg, rnd)
                tot.baseline.append(clean)
    finally:
        b.stop()
    return dict(tot.report(), **_log_events([b.log_path]), new_topic_cycles=len(ledger.topics) - (TOPIC in ledger.topics))


def run_failover(cycles: int, seed: int = 1, root: str | None = None, max_writers: int = 4, full_every: int = 10,
                 say=progress) -> dict:
    rnd = random.Random(seed)
    base = data_root(root, "kill-failover")
    cfg = _config(base, replicated=True)
    nodes = {1: (base / "a", free_port()), 2: (base / "b", free_port())}
    ledger, tot = Ledger(PARTITIONS, seed), Totals()

    def start(bid: int, role_args) -> tuple[BrokerProcess, float]:
        data, port = nodes[bid]
        return _start(data, port, cfg, rnd, ("--broker-id", str(bid), *role_args))

    def in_sync(master_b: BrokerProcess, slave_id: int, timeout=120) -> float:
        return wait_until(lambda: stats(master_b.url).get(f"slave_{slave_id}_insync") == 1, timeout,
                          f"slave {slave_id} to be in sync")

    master_id, slave_id = 1, 2
    brokers = {}
    brokers[1], _ = start(1, ("--role", "master"))
    brokers[2], _ = start(2, ("--role", "slave", "--master", brokers[1].url))
    try:
        in_sync(brokers[1], 2)
        for cycle in range(1, cycles + 1):
            m, s = brokers[master_id], brokers[slave_id]
            clients = Clients(m.url, cycle, rnd.randint(1, max_writers), rnd, ledger)
            clients.ready()
            after = rnd.uniform(0.05, 1.5)
            time.sleep(after)
            t_kill = kill_group(m)
            left, _ = _collect(m, "group", t_kill)
            acked = clients.finish()
            ledger.add(acked)
            t0 = time.monotonic()
            r = hpbroker("promote", "--broker", s.url)
            if r.returncode != 0:
                raise RuntimeError(f"promote failed: {r.stderr.strip()}")
            promote = time.monotonic() - t0
            full = cycle % full_every == 0 or cycle == cycles
            c = ledger.check(s.url, acked, cycle, full=full)
            t0 = time.monotonic()
            brokers[master_id], restart = start(master_id, ("--role", "slave", "--master", s.url))
            in_sync(s, master_id)
            resync = time.monotonic() - t0  # from the old master's start to acks=all served again
            tot.add(c)
            tot.cycles += 1
            tot.acked_records += sum(a.n for a in acked)
            tot.acked_all_records += sum(a.n for a in acked if a.acks == -1)
            tot.acked_requests += len(acked)
            tot.restart.append(restart)
            tot.promote.append(promote)
            tot.resync.append(resync)
            tot.kill_after.append(after)
            tot.shm_left += left
            tot.targets["master group"] = tot.targets.get("master group", 0) + 1
            say(f"cycle {cycle}/{cycles}: {len(clients.procs)} client(s) on broker {master_id} ({clients.topic}), kill -9 after "
                f"{after:.2f} s, {sum(a.n for a in acked)} records acked "
                f"({sum(1 for a in acked if a.acks == -1)} acks=all / {sum(1 for a in acked if a.acks == 1)} acks=1 "
                f"requests); promote {promote:.2f} s; lost acks=all {c['lost_all']} (acks=1 {c['lost_one']}) "
                f"dup {c['dup']} gaps {c['gaps']} regressed {c['regressed']} bad {c['bad']}; old master started "
                f"{restart:.2f} s, in sync {resync:.2f} s after its start; shm left {left}" + (" [full check]" if full else ""))
            if full and cycle < cycles:  # the baseline: the same broker, stopped cleanly, started as the same slave
                brokers[master_id].stop()
                brokers[master_id], clean = start(master_id, ("--role", "slave", "--master", s.url))
                tot.baseline.append(clean)
                in_sync(s, master_id)
            master_id, slave_id = slave_id, master_id
    finally:
        for b in brokers.values():
            b.stop()
    r = hpbroker("log", "verify", str(nodes[1][0]), "--compare", str(nodes[2][0]))
    out = dict(tot.report(), **_log_events([b.log_path for b in brokers.values()]),
               new_topic_cycles=len(ledger.topics) - (TOPIC in ledger.topics))
    out["replicas_identical"] = r.returncode == 0
    if r.returncode != 0:
        say(f"log verify --compare: {r.stdout.strip()[-2000:]} {r.stderr.strip()[-2000:]}")
    return out
