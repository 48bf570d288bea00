"""Consumer groups with real processes: a broker process, member processes
(tests/group_worker.py) killed with -9 or paused with SIGSTOP, and
committed offsets across a broker kill -9 and a sync-mode failover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from brokerproc import BrokerProcess
from hpbroker.client import Consumer, Producer
from hpbroker.client.admin import Admin
from hpbroker.ring import cleanup_stale
from test_replication import master, promote, slave, stats, wait_until

HERE = Path(__file__).resolve().parent


class Worker:
    """A group member process; its JSON events are collected by a thread."""

    def __init__(self, url: str, topic: str, group: str, out: Path, *args: str):
        self.out = out
        self.events: list[dict] = []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
        self.proc = subprocess.Popen([sys.executable, str(HERE / "group_worker.py"), url, topic, group, str(out), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def owned(self) -> set[int]:
        own: set[int] = set()
        for e in list(self.events):
            if e["event"] == "assigned":
                own |= {p for p, _ in e["partitions"]}
            elif e["event"] in ("revoked", "lost"):
                own -= set(e["partitions"])
        return own

    def starts(self) -> dict[int, list[int]]:
        """partition -> every position it was assigned at."""
        out: dict[int, list[int]] = defaultdict(list)
        for e in list(self.events):
            if e["event"] == "assigned":
                for p, pos in e["partitions"]:
                    out[p].append(pos)
        return out

    def processed(self) -> list[tuple[int, int]]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        return [tuple(map(int, line.split())) for line in text.splitlines() if line.count(" ") == 1]

    def signal(self, sig) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode

    def output(self) -> str:
        return "".join(self.lines[-40:])


@pytest.fixture
def started():
    procs: list = []
    yield procs
    for p in procs:
        p.stop()


def committed(url: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    with Consumer(url, topic, group_id=group, partitions=range(partitions), enable_auto_commit=False) as c:
        return {p: c.committed(p) for p in range(partitions)}


def test_three_members_share_twelve_partitions_and_a_killed_ones_move(tmp_path, started):
    b = BrokerProcess(tmp_path / "data")
    started.append(b)
    b.start()
    Admin(b.url).create_topic("work", 12)
    # a 6 s session: at a load average of 15+ a member's heartbeat can be late by more than 3 s,
    # and a live member expelled then makes the membership churn under the test
    ws = [Worker(b.url, "work", "billing", tmp_path / f"w{i}.txt", "--session-ms", "6000", "--commit-ms", "300")
          for i in range(3)]
    started.extend(ws)
    wait_until(lambda: [len(w.owned()) for w in ws] == [4, 4, 4], 60, "three members with 4 partitions each",
               state=lambda: [sorted(w.owned()) for w in ws])
    assert set().union(*(w.owned() for w in ws)) == set(range(12))

    total = 200_000
    sent = [0]

    def produce():
        with Producer(b.url, acks=1, linger_ms=5) as p:
            for i in range(0, total, 100):
                p.send_batch("work", [str(i + j).encode() for j in range(100)], partition=(i // 100) % 12)
                sent[0] = i + 100
            p.flush(60)

    t = threading.Thread(target=produce)
    t.start()
    wait_until(lambda: sent[0] >= total // 3, 60, "a third of the messages sent")
    victim, survivors = ws[0], ws[1:]
    victim_parts = victim.owned()
    victim.proc.kill()  # kill -9
    victim.proc.wait(10)
    wait_until(lambda: sorted(len(w.owned()) for w in survivors) == [6, 6], 60, "the survivors to take over",
               state=lambda: [sorted(w.owned()) for w in survivors])
    t.join(120)
    assert not t.is_alive() and sent[0] == total
    with Consumer(b.url, "work") as probe:
        ends = probe.end_offsets(range(12))
    assert sum(ends.values()) == total

    def covered():
        seen = set()
        for w in ws:
            seen.update(w.processed())
        return all((p, o) in seen for p in range(12) for o in range(ends[p]))

    wait_until(covered, 120, "every message processed")
    for w in survivors:
        assert w.stop() == 0, w.output()

    per_worker = [w.processed() for w in ws]
    # order: each member sees each partition's offsets in increasing order
    for rows in per_worker:
        last: dict[int, int] = {}
        for p, o in rows:
            assert o > last.get(p, -1), f"partition {p}: offset {o} after {last.get(p)}"
            last[p] = o
    # duplicates only where the killed member's uncommitted work was redelivered
    count = defaultdict(int)
    for rows in per_worker:
        for row in rows:
            count[row] += 1
    dups = {row for row, n in count.items() if n > 1}
    victim_last = defaultdict(lambda: -1)
    for p, o in per_worker[0]:
        victim_last[p] = max(victim_last[p], o)
    # A partition may have moved more than once (a member expelled on a loaded machine and back, then
    # the kill): each duplicate must lie between a survivor's start on it and the victim's last read.
    victim_ever = set(victim.starts())
    for p, o in dups:
        assert p in victim_ever | victim_parts, f"a duplicate in partition {p}, which the killed member never owned"
        starts = sorted(s for w in survivors for s in w.starts().get(p, []))
        events = [e for e in victim.events if p in [q if isinstance(q, int) else q[0] for q in e.get("partitions", [])]]
        assert any(s <= o for s in starts) and o <= victim_last[p], (p, o, starts, victim_last[p], events)
    # what was committed last is where a new member would start: at the end
    assert committed(b.url, "billing", "work", 12) == ends


def test_a_paused_member_that_lost_its_partitions_cannot_commit_them(tmp_path, started):
    b = BrokerProcess(tmp_path / "data")
    started.append(b)
    b.start()
    Admin(b.url).create_topic("pause", 4)
    a = Worker(b.url, "pause", "g", tmp_path / "a.txt", "--session-ms", "1500", "--manual-commit")
    started.append(a)
    wait_until(lambda: len(a.owned()) == 4, 30, "a to own everything")
    other = Worker(b.url, "pause", "g", tmp_path / "b.txt", "--session-ms", "1500", "--manual-commit")
    started.append(other)
    wait_until(lambda: len(a.owned()) == 2 and len(other.owned()) == 2, 30, "a split", state=lambda: (a.owned(), other.owned()))
    with Producer(b.url) as p:
        for i in range(400):
            p.send("pause", str(i).encode(), partition=i % 4)
        p.flush(30)
    wait_until(lambda: len(a.processed()) + len(other.processed()) == 400, 30, "the first 400 processed")
    a_parts = a.owned()

    a.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: len(other.owned()) == 4, 30, "the other member to take everything")
        with Producer(b.url) as p:
            for i in range(400, 800):
                p.send("pause", str(i).encode(), partition=i % 4)
            p.flush(30)
        wait_until(lambda: len(other.processed()) + len([r for r in a.processed()]) >= 800
                   and committed(b.url, "g", "pause", 4) == {p: 200 for p in range(4)}, 30,
                   "the other member to process and commit everything")
    finally:
        a.signal(signal.SIGCONT)
    wait_until(lambda: any(e["event"] in ("commit_error", "commit_ok") for e in a.events), 30,
               "the woken member's commit attempt", state=a.output)
    attempt = next(e for e in a.events if e["event"] in ("commit_error", "commit_ok"))
    assert attempt["event"] == "commit_error", a.output()
    assert attempt["code"] in (16, 17), attempt  # UNKNOWN_MEMBER_ID or FENCED_MEMBER_EPOCH
    assert set(attempt["partitions"]) & a_parts
    # the new owner's commits stand
    assert committed(b.url, "g", "pause", 4) == {p: 200 for p in range(4)}


def test_committed_offsets_survive_a_broker_kill_9(tmp_path, started):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "3"))
    started.append(b)
    b.start()
    with Producer(b.url) as p:
        for i in range(300):
            p.send("keep", str(i).encode(), partition=i % 3)
        p.flush(30)
    with Consumer(b.url, "keep", group_id="k", auto_offset_reset="earliest") as c:
        got = []
        while len(got) < 150:
            got += c.poll(500, max_records=150 - len(got))
        c.commit()
        at = {p: c.position(p) for p in range(3)}
    assert sum(at.values()) == 150
    b.kill()
    b.start()
    assert committed(b.url, "k", "keep", 3) == at
    with Consumer(b.url, "keep", group_id="k", auto_offset_reset="earliest") as c:
        rest = []
        deadline = time.monotonic() + 30
        while len(rest) < 150 and time.monotonic() < deadline:
            rest += c.poll(500)
    assert sorted(int(m.value) for m in got + rest) == list(range(300))


def test_committed_offsets_survive_a_sync_failover_to_the_slave(tmp_path):
    a = master(tmp_path, "a", broker_id=1)
    s = slave(tmp_path, "s", a, broker_id=2)
    both = f"{a.url},{s.url}"
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        with Producer(a.url, acks="all") as p:
            for i in range(200):
                p.send("fo", str(i).encode(), partition=i % 4)
            p.flush(30)
        with Consumer(a.url, "fo", group_id="f", auto_offset_reset="earliest") as c:
            got = []
            while len(got) < 120:
                got += c.poll(500, max_records=120 - len(got))
            c.commit()  # acks=all on __consumer_offsets: on the slave too before it returns
            at = {p: c.position(p) for p in range(4)}
        a.kill()
        promote(s)
        with Consumer(both, "fo", group_id="f", auto_offset_reset="earliest", request_timeout_ms=2000,
                      connect_timeout_ms=2000) as c:
            assert {p: c.committed(p) for p in range(4)} == at
            rest = []
            deadline = time.monotonic() + 30
            while len(rest) < 80 and time.monotonic() < deadline:
                rest += c.poll(500)
        assert sorted(int(m.value) for m in got + rest) == list(range(200))
    finally:
        s.stop(), a.stop()
        cleanup_stale(f"p{a.port}")


def test_groups_are_spread_over_acceptors_and_others_answer_not_coordinator(tmp_path, started):
    from rawclient import RawClient
    from hpbroker.protocol import messages as m

    b = BrokerProcess(tmp_path / "data", args=("--acceptors", "2"))
    started.append(b)
    b.start()
    c = RawClient(b.url)
    md, _ = c.call(m.Metadata(id=c.next_id(), topics=["spread"]))
    coordinators = {}
    for g in [f"g{i}" for i in range(16)]:
        rep, _ = c.call(m.FindCoordinator(id=c.next_id(), group=g))
        assert rep.code == 0 and rep.endpoint == md.acceptors[rep.acceptor]
        coordinators[g] = rep.acceptor
    assert set(coordinators.values()) == {0, 1}  # 16 groups over 8 offsets partitions land on both
    g = next(g for g, a in coordinators.items() if a == 1)
    rep, _ = c.call(m.GroupHeartbeat(id=c.next_id(), group=g, member_id="x", topics=["spread"]))
    assert rep.code == 15 and "acceptor 1" in rep.message  # NOT_COORDINATOR, naming the right one
    other = RawClient(md.acceptors[1])
    rep, _ = other.call(m.GroupHeartbeat(id=other.next_id(), group=g, member_id="x", topics=["spread"]))
    assert rep.code == 0 and rep.member_epoch > 0 and rep.assignment
    # a Consumer finds its coordinator by itself, commits there, and reads it back
    with Producer(b.url) as p:
        for i in range(40):
            p.send("spread", b"v", partition=i % 4)
        p.flush(30)
    with Consumer(b.url, "spread", group_id=g, auto_offset_reset="earliest") as cons:
        got = []
        while len(got) < 40:
            got += cons.poll(500)
        cons.commit()
        assert {p: cons.committed(p) for p in range(4)} == {p: 10 for p in range(4)}


def test_a_member_that_stops_polling_leaves_and_rejoins_on_its_next_poll(tmp_path, started):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "2"))
    started.append(b)
    b.start()
    lost, assigned = [], []
    with Consumer(b.url, "slow", group_id="s", max_poll_interval_ms=1000, session_timeout_ms=5000,
                  on_lost=lost.append, on_assign=assigned.append) as c:
        wait_until(lambda: c.poll(100) is not None and len(c.assignment()) == 2, 30, "the assignment")
        time.sleep(2.5)  # no poll for longer than max_poll_interval_ms: the heartbeat thread leaves the group
        from hpbroker.protocol.errors import BrokerError

        try:
            assert not Admin(b.url).describe_group("s").members  # it left
        except BrokerError as e:
            assert e.code == 18  # GROUP_ID_NOT_FOUND: it left, and nothing was committed
        c.poll(0)
        assert lost and c.assignment() == set()  # dropped without a commit
        wait_until(lambda: c.poll(100) is not None and len(c.assignment()) == 2, 30, "the rejoin")
    assert len(assigned) == 2
