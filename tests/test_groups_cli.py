"""hpbroker consume --group, groups list/describe/reset-offsets and dlq replay, as a user runs them,
against one real broker process with two acceptors (so groups are spread over two coordinators).

Every test uses its own topics and groups; every process a test starts is
stopped by pid at its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import msgspec
import pytest

from brokerproc import BrokerProcess
from rawclient import RawClient

from hpbroker import batch
from hpbroker.client.admin import Admin
from hpbroker.client.cluster import reachable
from hpbroker.groups import offsets_log
from hpbroker.protocol import messages as m

ACCEPTORS = 2
PARTITIONS = 4


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("groups-cli") / "data",
                      args=("--partitions", str(PARTITIONS), "--acceptors", str(ACCEPTORS)))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def procs():
    """Popen objects a test started: each is stopped by its pid at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(30)


def hpb(url: str, *args, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HPBROKER_URL=url)
    return subprocess.run([sys.executable, "-m", "hpbroker", *args], input=input, capture_output=True, env=env,
                          timeout=timeout)


def start_hpb(url: str, *args) -> subprocess.Popen:
    env = dict(os.environ, HPBROKER_URL=url)
    return subprocess.Popen([sys.executable, "-m", "hpbroker", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)


def one_line_error(r: subprocess.CompletedProcess, *words: bytes) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count(b"\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def produce(url: str, topic: str, lines: list[bytes], partition: int | None = None) -> None:
    args = ["produce", topic, "--acks", "all"] + ([] if partition is None else ["--partition", str(partition)])
    r = hpb(url, *args, input=b"\n".join(lines) + b"\n")
    assert r.returncode == 0, r.stderr


def committed(url: str, group: str) -> dict[tuple[str, int], int]:
    with Admin(url) as a:
        return a.committed_offsets(group)


def wait_members(url: str, group: str, n: int, timeout: float = 30.0):
    """The group's description once it has ``n`` members, each owning what the target gives it."""
    deadline = time.monotonic() + timeout
    with Admin(url) as a:
        while True:
            try:
                d = a.describe_group(group)
                if len(d.members) == n and (n == 0 or d.state == "stable"):
                    return d
            except Exception as e:  # not there yet
                d = e
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group}: not {n} stable members after {timeout} s: {d}")
            time.sleep(0.1)


def stop(p: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    p.send_signal(sig)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def raw_produce(url: str, topic: str, partition: int, records: list[tuple[bytes | None, bytes, list]],
                expect_code: int = 0):
    """One batch of (key, value, headers) records, built by hand (headers encoded as the
    batch format says: a msgpack array of [str, bin] pairs; bytes are taken as they are), to the
    acceptor serving the partition."""
    with Admin(url) as a:
        md = a.metadata(None)
        if topic not in {t.name for t in md.topics}:
            a.create_topic(topic, PARTITIONS, if_not_exists=True)
        acceptors = [reachable(e, url) for e in a.metadata(None).acceptors]
    blobs = [h if isinstance(h, bytes) else msgspec.msgpack.encode([[n, v] for n, v in h]) if h else None
             for _, _, h in records]
    data = batch.encode_batch([v for _, v, _ in records], [k for k, _, _ in records], headers=blobs)
    c = RawClient(acceptors[partition % len(acceptors)])
    try:
        rep = c.produce(topic, partition, [bytes(data)], acks=-1)
        assert rep.code == expect_code, rep
    finally:
        c.close()
    return rep


def read_all(url: str, topic: str) -> list[batch.Record]:
    """Every record of every partition of ``topic``, straight from the log (raw fetches)."""
    with Admin(url) as a:
        acceptors = [reachable(e, url) for e in a.metadata(None).acceptors]
        n = len(a.topic(topic).partitions)
    out = []
    for p in range(n):
        c = RawClient(acceptors[p % len(acceptors)])
        try:
            out.extend((p, r) for r in c.fetch_all(topic, p))
        finally:
            c.close()
    return out


def headers_of(blob) -> list[tuple[str, bytes]]:
    return [(n, bytes(v)) for n, v in msgspec.msgpack.decode(blob)] if blob else []


# -- consume --group ---------------------------------------------------------------------------


def test_consume_group_commits_and_a_second_run_resumes_after_the_first(broker):
    lines = [b"m%03d" % i for i in range(120)]
    for p in range(PARTITIONS):
        produce(broker.url, "cg-resume", lines[p::PARTITIONS], partition=p)
    r = hpb(broker.url, "consume", "cg-resume", "--group", "resume", "--from-beginning", "--max-messages", "50")
    assert r.returncode == 0, r.stderr
    first = r.stdout.split(b"\n")[:-1]
    assert len(first) == 50
    assert sum(committed(broker.url, "resume").values()) == 50  # the final commit covers exactly what was printed
    r = hpb(broker.url, "consume", "cg-resume", "--group", "resume", "--from-beginning", "--timeout-ms", "3000")
    assert r.returncode == 0, r.stderr
    second = r.stdout.split(b"\n")[:-1]
    assert sorted(first + second) == lines  # each message once: the second run started at the first's commits
    assert committed(broker.url, "resume") == {("cg-resume", p): 30 for p in range(PARTITIONS)}
    r = hpb(broker.url, "consume", "cg-resume", "--group", "resume", "--from-beginning", "--timeout-ms", "1500")
    assert r.returncode == 0 and r.stdout == b"", r.stderr


def test_consume_group_sigterm_commits_and_leaves_at_once(broker, procs):
    produce(broker.url, "cg-term", [b"x%d" % i for i in range(40)])
    p = start_hpb(broker.url, "consume", "cg-term", "--group", "term", "--from-beginning", "--instance", "term-1",
                  "--session-timeout-ms", "60000", "--auto-commit-interval-ms", "600000")
    procs.append(p)
    d = wait_members(broker.url, "term", 1)
    assert d.members[0].instance_id == "term-1"
    time.sleep(2.0)  # let it fetch and print the 40 (auto-commit is 10 min away: only the final commit counts)
    t0 = time.monotonic()
    rc, out, err = stop(p)
    assert rc == 0, err
    assert sorted(out.split(b"\n")[:-1]) == sorted(b"x%d" % i for i in range(40))
    with Admin(broker.url) as a:
        d = a.describe_group("term")
    assert d.members == [] and d.state == "empty"  # left at once, not 60 s later at its session's expiry
    assert time.monotonic() - t0 < 20
    assert sum(committed(broker.url, "term").values()) == 40  # the final commit on SIGTERM


def test_consume_broadcast_instances_each_read_everything(broker, tmp_path):
    produce(broker.url, "cg-bcast", [b"b%d" % i for i in range(10)])
    store = str(tmp_path / "offsets.json")
    for inst in ("i1", "i2"):
        r = hpb(broker.url, "consume", "cg-bcast", "--group", "bc", "--broadcast", "--instance", inst,
                "--offsets-file", store, "--from-beginning", "--timeout-ms", "2000")
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == sorted(b"b%d" % i for i in range(10))
    r = hpb(broker.url, "consume", "cg-bcast", "--group", "bc", "--broadcast", "--instance", "i1",
            "--offsets-file", store, "--from-beginning", "--timeout-ms", "1500")
    assert r.returncode == 0 and r.stdout == b"", r.stderr


def test_consume_flag_mistakes_are_one_line_and_exit_2(broker):
    for args in (["--broadcast"], ["--instance", "x"], ["--group", "g", "--offset", "3"]):
        r = hpb(broker.url, "consume", "cg-flags", *args, "--timeout-ms", "100")
        assert r.returncode == 2 and r.stderr.count(b"\n") == 1, (args, r.stderr)


def test_consume_headers(broker):
    raw_produce(broker.url, "cg-headers", 1, [(b"k1", b"v1", [("trace", b"t-1"), ("n", b"a,b=c\n")]),
                                               (None, b"v2", [])])
    r = hpb(broker.url, "consume", "cg-headers", "--partition", "1", "--from-beginning", "--max-messages", "2",
            "--headers", "--print-key")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"trace=t-1,n=a\\,b\\=c\\n\tk1\tv1\nNO_HEADERS\t\tv2\n"
    # headers bytes that are not the batch format's never get in: the broker refuses the batch
    # (CORRUPT_BATCH), so no consumer meets them (tests/test_fetcher.py: what one would do if it did)
    rep = raw_produce(broker.url, "cg-headers", 2, [(None, b"v3", b"\xc1 not msgpack")], expect_code=3)
    assert b"msgpack" in rep.message.encode()


# -- groups list / describe ------------------------------------------------------------------------


def coordinator_index(group: str) -> int:
    return offsets_log.partition_for(group, 8) % ACCEPTORS  # groups.offsets_partitions default 8


def test_groups_list_and_describe(broker, procs):
    # two groups coordinated by different acceptors: list must ask both
    names = [f"lst{i}" for i in range(40)]
    g0 = next(n for n in names if coordinator_index(n) == 0)
    g1 = next(n for n in names if coordinator_index(n) == 1)
    c = RawClient(broker.url)
    try:
        assert [c.call(m.FindCoordinator(id=c.next_id(), group=g))[0].acceptor for g in (g0, g1)] == [0, 1]
    finally:
        c.close()
    produce(broker.url, "gd-data", [b"d%d" % i for i in range(50)], partition=0)
    for g in (g0, g1):
        r = hpb(broker.url, "consume", "gd-data", "--group", g, "--from-beginning", "--max-messages", "20")
        assert r.returncode == 0, r.stderr
    # a live member of g0, subscribed to another (empty) topic
    p = start_hpb(broker.url, "consume", "gd-idle", "--group", g0, "--instance", "inst-x")
    procs.append(p)
    d = wait_members(broker.url, g0, 1)
    member = d.members[0].member_id

    r = hpb(broker.url, "groups", "list")
    assert r.returncode == 0, r.stderr
    rows = {line.split(b"\t")[0]: line.split(b"\t") for line in r.stdout.splitlines()[1:]}
    assert rows[g0.encode()] == [g0.encode(), b"stable", b"1"]
    assert rows[g1.encode()] == [g1.encode(), b"empty", b"0"]

    r = hpb(broker.url, "groups", "describe", g0)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert text.startswith(f"group {g0}: stable,") and "1 member," in text and "lag 30" in text
    mrow = next(line.split("\t") for line in text.splitlines() if line.startswith(member))
    assert mrow[2] == "inst-x" and mrow[4] == "gd-idle:0,1,2,3" and int(mrow[3]) > 0
    table = text[text.index("topic\tpartition\tcommitted"):].splitlines()
    assert table[0] == "topic\tpartition\tcommitted\thigh-watermark\tlag\towner"
    parts = {(c[0], int(c[1])): c[2:] for c in (line.split("\t") for line in table[1:])}
    assert parts[("gd-data", 0)] == ["20", "50", "30", "-"]  # committed 20 of 50, nobody owns it now
    for q in range(PARTITIONS):
        assert parts[("gd-idle", q)][3] == member
    rc, _, err = stop(p)
    assert rc == 0, err


def test_unknown_group_is_one_line_and_exit_1(broker):
    one_line_error(hpb(broker.url, "groups", "describe", "no-such-group"), b"no-such-group", b"GROUP_ID_NOT_FOUND")
    one_line_error(hpb(broker.url, "groups", "reset-offsets", "no-such-group", "--to-earliest"), b"no-such-group")


# -- groups reset-offsets ------------------------------------------------------------------------


def reset(url: str, group: str, *args) -> dict[tuple[str, int], tuple[str, int]]:
    r = hpb(url, "groups", "reset-offsets", group, *args)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "topic\tpartition\told -> new"
    out = {}
    for line in lines[1:-1]:
        topic, part, change = line.split("\t")
        old, new = change.split(" -> ")
        out[(topic, int(part))] = (old, int(new))
    return out


def test_reset_offsets(broker, procs):
    url, t, g = broker.url, "rs-data", "rs"
    produce(url, t, [b"a%d" % i for i in range(10)], partition=0)
    produce(url, t, [b"b%d" % i for i in range(20)], partition=1)
    r = hpb(url, "consume", t, "--group", g, "--from-beginning", "--timeout-ms", "2000")
    assert r.returncode == 0 and len(r.stdout.split()) == 30, r.stderr
    assert committed(url, g) == {(t, 0): 10, (t, 1): 20, (t, 2): 0, (t, 3): 0}

    rows = reset(url, g, "--to-earliest", "--dry-run")
    assert rows == {(t, 0): ("10", 0), (t, 1): ("20", 0), (t, 2): ("0", 0), (t, 3): ("0", 0)}
    assert committed(url, g)[(t, 1)] == 20  # a dry run commits nothing

    assert reset(url, g, "--to-earliest")[(t, 1)] == ("20", 0)
    assert committed(url, g) == {(t, 0): 0, (t, 1): 0, (t, 2): 0, (t, 3): 0}
    r = hpb(url, "consume", t, "--group", g, "--timeout-ms", "2000")
    assert r.returncode == 0 and len(r.stdout.split()) == 30, r.stderr  # everything again, from the reset offsets

    reset(url, g, "--shift", "-3")
    assert committed(url, g) == {(t, 0): 7, (t, 1): 17, (t, 2): 0, (t, 3): 0}  # 2 and 3: clamped to the log start
    reset(url, g, "--shift", "5", "--topic", t)
    assert committed(url, g) == {(t, 0): 10, (t, 1): 20, (t, 2): 0, (t, 3): 0}  # clamped to the high watermark
    reset(url, g, "--to-earliest")
    reset(url, g, "--to-latest")
    assert committed(url, g) == {(t, 0): 10, (t, 1): 20, (t, 2): 0, (t, 3): 0}

    time.sleep(0.05)
    cut = datetime.now(timezone.utc)
    time.sleep(0.05)
    produce(url, t, [b"c%d" % i for i in range(5)], partition=0)
    reset(url, g, "--to-earliest")
    rows = reset(url, g, "--to-datetime", cut.isoformat())
    assert rows[(t, 0)] == ("0", 10)  # the first message written after the cut
    assert rows[(t, 1)] == ("0", 20)  # nothing written after it: the high watermark
    rows = reset(url, g, "--to-datetime", "2000-01-01T00:00:00Z")
    assert rows[(t, 0)] == ("10", 0)

    # refused while a member is live; nothing changes
    p = start_hpb(url, "consume", t, "--group", g, "--auto-commit-interval-ms", "600000")
    procs.append(p)
    wait_members(url, g, 1)
    before = committed(url, g)
    r = hpb(url, "groups", "reset-offsets", g, "--to-latest")
    one_line_error(r, b"NON_EMPTY_GROUP", b"live member")
    assert committed(url, g) == before
    rc, _, err = stop(p)
    assert rc == 0, err
    assert reset(url, g, "--to-earliest")[(t, 0)][1] == 0  # and taken once it left


def test_reset_offsets_flag_mistakes(broker):
    r = hpb(broker.url, "groups", "reset-offsets", "g", "--to-datetime", "yesterday")
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1, r.stderr
    r = hpb(broker.url, "groups", "reset-offsets", "g")
    assert r.returncode == 2, r.stderr  # one of --to-earliest|--to-latest|--to-datetime|--shift is required
    r = hpb(broker.url, "groups", "reset-offsets", "g", "--to-earliest", "--to-latest")
    assert r.returncode == 2, r.stderr


# -- dlq replay ---------------------------------------------------------------------------------

def dead_letter(n: int, key: bytes | None, topic: str = "orders", partition: int = 2, extra=()):
    return (key, b"order-%d" % n, [*extra,
                                   ("hpbroker.dlq.topic", topic.encode()), ("hpbroker.dlq.partition", str(partition).encode()),
                                   ("hpbroker.dlq.offset", str(n).encode()), ("hpbroker.dlq.group", b"billing"),
                                   ("hpbroker.dlq.error", b"ValueError: bad order"), ("hpbroker.dlq.attempts", b"6")])


def test_dlq_replay(broker):
    url = broker.url
    with Admin(url) as a:
        a.create_topic("orders", PARTITIONS, if_not_exists=True)
    raw_produce(url, "orders.billing.dlq", 0, [dead_letter(0, b"k0", extra=[("trace", b"t0")]), dead_letter(1, None)])
    raw_produce(url, "orders.billing.dlq", 3, [dead_letter(2, b"k2", partition=1),
                                               (b"kx", b"no-target", [("trace", b"tx")])])

    r = hpb(url, "dlq", "replay", "orders", "billing", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 5 and b"would be replayed" in r.stdout.splitlines()[-1]
    assert read_all(url, "orders") == [] and committed(url, "billing.dlq-replay") == {}

    r = hpb(url, "dlq", "replay", "orders", "billing", "--progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b"\n") == 1 and b"replayed 3 dead letters" in r.stdout and b"1 without" in r.stdout
    assert b"orders.billing.dlq/3@1" in r.stderr  # the one it cannot send is named
    got = sorted(((p, rec.key, rec.value, headers_of(rec.headers)) for p, rec in read_all(url, "orders")),
                 key=lambda x: x[2])
    # to the partition each came from, key and original headers kept, the hpbroker.dlq.* ones gone
    assert got == [(2, b"k0", b"order-0", [("trace", b"t0")]), (2, None, b"order-1", []), (1, b"k2", b"order-2", [])]

    r = hpb(url, "dlq", "replay", "orders", "billing")  # a second replay repeats nothing
    assert r.returncode == 0 and b"nothing to replay" in r.stdout, r.stderr
    assert len(read_all(url, "orders")) == 3

    raw_produce(url, "orders.billing.dlq", 1, [dead_letter(3, b"k3"), dead_letter(4, b"k4")])
    r = hpb(url, "dlq", "replay", "orders", "billing", "--max-messages", "1")
    assert r.returncode == 0 and b"replayed 1 dead letters" in r.stdout, r.stderr
    r = hpb(url, "dlq", "replay", "orders", "billing")
    assert r.returncode == 0 and b"replayed 1 dead letters" in r.stdout, r.stderr
    values = sorted(rec.value for _, rec in read_all(url, "orders"))
    assert values == [b"order-0", b"order-1", b"order-2", b"order-3", b"order-4"]


def test_a_dead_letter_with_unreadable_headers_never_gets_into_the_dlq(broker):
    """The broker checks record headers on produce, so replay never meets one
    it cannot decode (what the consumer does if it did: tests/test_fetcher.py)."""
    url = broker.url
    raw_produce(url, "bad.billing.dlq", 0, [dead_letter(0, b"k0", topic="bad"), (b"ky", b"v", b"\xc1 not msgpack")],
                expect_code=3)
    r = hpb(url, "dlq", "replay", "bad", "billing", "--dry-run")
    assert r.returncode == 0 and b"nothing to replay" in r.stdout  # the whole batch was refused


def test_dlq_replay_without_a_dlq_is_one_line_and_exit_1(broker):
    one_line_error(hpb(broker.url, "dlq", "replay", "nothing-failed", "nobody"), b"nothing-failed.nobody.dlq")
