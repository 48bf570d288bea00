"""``Consumer.run``: a handler that fails on chosen messages, with the DLQ,
the local journal (across a restart of the consumer) and drop; stop() and
the rewind of what was polled but not handled.  Real broker process."""

from __future__ import annotations

import threading

import pytest

from hpbroker.client import Consumer, Producer
from hpbroker.client.recovery_journal import RecoveryJournal

TOPIC = "jobs"
N = 60
BAD = {7, 23, 41}


def fill(url: str) -> None:
    with Producer(url) as p:
        for i in range(N):
            p.send(TOPIC, str(i).encode(), key=b"k%d" % i, partition=i % 4, headers=[("trace", b"t%d" % i)])
        p.flush(30)


def failing_handler(c: Consumer, seen: list, fail_on: set, calls: dict):
    def handle(msg):
        v = int(msg.value)
        calls[v] = calls.get(v, 0) + 1
        if v in fail_on:
            raise ValueError(f"cannot handle {v}")
        seen.append(v)
        if len(seen) >= N - len(fail_on):
            c.stop()

    return handle


def test_failed_messages_go_to_the_dlq_with_their_metadata_and_the_rest_once(broker):
    fill(broker.url)
    seen, calls = [], {}
    with Consumer(broker.url, TOPIC, group_id="workers", auto_offset_reset="earliest") as c:
        counts = c.run(failing_handler(c, seen, BAD, calls), max_retries=2, retry_backoff_ms=1)
    assert sorted(seen) == sorted(set(range(N)) - BAD)  # everything else exactly once
    assert {v: calls[v] for v in BAD} == {v: 3 for v in BAD}  # 1 try + 2 retries
    assert counts["dead_lettered"] == len(BAD) and counts["handled"] == N - len(BAD)
    with Consumer(broker.url, f"{TOPIC}.workers.dlq", auto_offset_reset="earliest") as d:
        dead = []
        while len(dead) < len(BAD):
            dead += d.poll(1000)
    by_value = {int(m.value): m for m in dead}
    assert set(by_value) == BAD
    for v, m in by_value.items():
        h = dict(m.headers)
        assert m.key == b"k%d" % v and h["trace"] == b"t%d" % v  # the original key and headers kept
        assert h["hpbroker.dlq.topic"] == TOPIC.encode()
        assert int(h["hpbroker.dlq.partition"]) == v % 4
        assert int(h["hpbroker.dlq.offset"]) == v // 4
        assert h["hpbroker.dlq.attempts"] == b"3" and b"cannot handle" in h["hpbroker.dlq.error"]
        assert h["hpbroker.dlq.group"] == b"workers"
    # the offsets were committed past the failed messages (they are in the DLQ)
    with Consumer(broker.url, TOPIC, group_id="workers", partitions=range(4), enable_auto_commit=False) as c:
        assert {p: c.committed(p) for p in range(4)} == {p: N // 4 for p in range(4)}


def test_the_local_journal_keeps_failed_messages_and_redelivers_them_after_a_restart(broker, tmp_path):
    fill(broker.url)
    seen, calls = [], {}
    recover = tmp_path / "recover"
    with Consumer(broker.url, TOPIC, group_id="local", auto_offset_reset="earliest") as c:
        counts = c.run(failing_handler(c, seen, BAD, calls), max_retries=1, retry_backoff_ms=1, on_failure="local",
                       recover_dir=str(recover))
    assert counts["journalled"] == len(BAD)
    with RecoveryJournal(recover, f"{TOPIC}@local") as j:
        kept = {int(e.value): e for _, e in j.pending()}
    assert set(kept) == BAD
    assert all(e.topic == TOPIC and e.offset == v // 4 and e.headers == [("trace", b"t%d" % v)] and e.attempts == 2
               and "cannot handle" in e.error for v, e in kept.items())

    # a restarted consumer, whose handler now works, gets them back from the journal
    redelivered = []

    def handle(msg):
        redelivered.append(int(msg.value))
        if len(redelivered) >= len(BAD):
            c.stop()

    with Consumer(broker.url, TOPIC, group_id="local", auto_offset_reset="earliest") as c:
        counts = c.run(handle, on_failure="local", recover_dir=str(recover), recover_interval_ms=200)
    assert sorted(redelivered) == sorted(BAD) and counts["recovered"] == len(BAD)
    with RecoveryJournal(recover, f"{TOPIC}@local") as j:
        assert j.pending() == []


def test_drop_counts_and_logs(broker):
    fill(broker.url)
    seen, calls = [], {}
    with Consumer(broker.url, TOPIC, group_id="dropper", auto_offset_reset="earliest") as c:
        counts = c.run(failing_handler(c, seen, {5}, calls), max_retries=0, on_failure="drop")
    assert counts["dropped"] == 1 and calls[5] == 1 and 5 not in seen


def test_stop_rewinds_what_was_polled_but_not_handled(broker):
    fill(broker.url)
    handled = []
    with Consumer(broker.url, TOPIC, group_id="stopper", auto_offset_reset="earliest", partitions=None) as c:
        def handle(msg):
            handled.append((msg.partition, msg.offset))
            if len(handled) == 5:
                threading.Thread(target=c.stop).start()
                threading.Event().wait(0.2)  # the stop lands while this message is in hand

        c.run(handle)
        positions = {p: c.position(p) for p in range(4)}
    done = {}
    for p, o in handled:
        done[p] = max(done.get(p, -1), o)
    # every partition's position is right after its last handled message (or where it started)
    assert all(positions[p] == done.get(p, -1) + 1 for p in range(4))
    with Consumer(broker.url, TOPIC, group_id="stopper", partitions=range(4), enable_auto_commit=False) as c2:
        assert {p: c2.committed(p) or 0 for p in range(4)} == positions


def test_bad_run_arguments_are_refused(broker):
    with Consumer(broker.url, TOPIC, group_id="args") as c:
        with pytest.raises(ValueError, match="on_failure"):
            c.run(print, on_failure="retry-forever")
        with pytest.raises(ValueError, match="max_retries"):
            c.run(print, max_retries=-1)
