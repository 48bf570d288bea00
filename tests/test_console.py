"""hpbroker produce / consume / topics as a user runs them, against a real broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def hpb(*args, input: bytes | None = None, url: str | None = None, timeout: float = 120):
    env = dict(os.environ)
    if url:
        env["HPBROKER_URL"] = url
    return subprocess.run([sys.executable, "-m", "hpbroker", *args], input=input, capture_output=True, env=env, timeout=timeout)


def test_produce_consume_round_trip(broker):
    lines = [b"line %d" % i for i in range(5000)] + [b"", b"tab\tinside", b"\xff\xfe binary"]
    r = hpb("produce", "cli", "--acks", "all", input=b"\n".join(lines) + b"\n", url=broker.url)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(b"\n") == 1 and b"5003 messages" in r.stderr
    r = hpb("consume", "cli", "--from-beginning", "--max-messages", str(len(lines)), url=broker.url)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split(b"\n")[:-1]) == sorted(lines)


def test_keys_and_partition(broker):
    r = hpb("produce", "kcli", "--broker", broker.url, "--key-separator", ":", "--partition", "2",
            input=b"k1:v1\nk2:v2\nnokey\n")
    assert r.returncode == 0, r.stderr
    r = hpb("consume", "kcli", "--broker", broker.url, "--partition", "2", "--offset", "1", "--print-key",
            "--key-separator", "=", "--max-messages", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"k2=v2\n=nokey\n"


def test_consume_stops_after_idle_timeout(broker):
    r = hpb("consume", "quiet", "--broker", broker.url, "--from-beginning", "--timeout-ms", "500")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""


def test_topics(broker):
    r = hpb("topics", "create", "tc", "--partitions", "3", "--broker", broker.url)
    assert r.returncode == 0, r.stderr
    r = hpb("topics", "create", "tc", "--partitions", "3", "--broker", broker.url)
    assert r.returncode == 1 and b"TOPIC_ALREADY_EXISTS" in r.stderr and r.stderr.count(b"\n") == 1
    r = hpb("topics", "list", "--broker", broker.url)
    assert r.returncode == 0 and b"tc\t3" in r.stdout.splitlines()
    hpb("produce", "tc", "--broker", broker.url, "--partition", "1", input=b"a\nb\n")
    r = hpb("topics", "describe", "tc", "--broker", broker.url)
    assert r.returncode == 0, r.stderr
    rows = [line.split(b"\t") for line in r.stdout.splitlines()[2:]]
    assert [(row[0], row[3], row[4]) for row in rows] == [(b"0", b"0", b"0"), (b"1", b"0", b"2"), (b"2", b"0", b"0")]


def test_unreachable_broker_is_one_line_and_exit_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    for args, stdin in ((["produce", "t"], b"x\n"), (["consume", "t"], None), (["topics", "list"], None),
                        (["stats"], None), (["promote"], None)):  # stats and promote used to wait for ever
        r = hpb(*args, "--broker", url, "--connect-timeout-ms", "500", input=stdin, timeout=60)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.count(b"\n") == 1 and url.encode() in r.stderr, r.stderr


def test_a_malformed_broker_url_is_one_line_and_exit_2():
    for args in (["topics", "list", "--broker", "nonsense"], ["produce", "t", "--broker", "tcp://127.0.0.1:1,bad"],
                 ["stats", "--broker", "tcp://127.0.0.1:1,tcp://127.0.0.1:2"]):
        r = hpb(*args, input=b"x\n", timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count(b"\n") == 1 and b"--broker" in r.stderr, r.stderr


def test_a_broker_list_finds_the_one_that_answers(broker):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    both = f"{dead},{broker.url}"
    r = hpb("produce", "listed", "--broker", both, "--connect-timeout-ms", "1000", input=b"a\nb\n")
    assert r.returncode == 0, r.stderr
    r = hpb("consume", "listed", "--broker", both, "--connect-timeout-ms", "1000", "--from-beginning", "--max-messages", "2")
    assert r.returncode == 0 and sorted(r.stdout.split()) == [b"a", b"b"], r.stderr
