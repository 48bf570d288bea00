"""The Producer with a spill journal against real broker processes
(docs/client.md, "Spilling to disk"): a broker stopped (SIGTERM) or killed
(SIGKILL) mid-stream and restarted on the same port and data directory, a
producer killed -9 while spilling and restarted on the same spill_dir, a
full buffer with block_on_full=False, a close during an outage, and the
knobs' refusals.

Every check counts messages instead of deduplicating them: no message may
be missing and each partition's first copies must come in send order.  A
batch whose acknowledgement was lost in a broker crash is sent again (the
at-least-once window the idempotent producer will close), so the stop and
kill tests report how many duplicates they saw instead of asserting none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from brokerproc import BrokerProcess, free_port
from hpbroker.client import BrokerError, Consumer, ErrorCode, Producer
from hpbroker.client.framing import JournalLocked
from hpbroker.client.partitioner import partition_for_key

ROOT = Path(__file__).resolve().parent.parent
KEYS = [b"k%d" % i for i in range(8)]


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def consume_all(url: str, topic: str, idle_polls: int = 6) -> dict[int, list]:
    """partition -> the Messages in log order, read until nothing comes for a while."""
    got: dict[int, list] = {}
    with Consumer(url, topic, auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        idle = 0
        while idle < idle_polls:
            more = c.poll(timeout_ms=500)
            idle = 0 if more else idle + 1
            for m in more:
                got.setdefault(m.partition, []).append(m)
    return got


def number(m) -> int:
    """The message's number: its value is the number, maybe padded with dots."""
    return int(m.value.rstrip(b"."))


def check_partitions(got: dict[int, list], sent: list[tuple[int, bytes]], nparts: int = 4) -> int:
    """Every message of ``sent`` ((number, key) in send order) is in its key's
    partition, the partitions hold nothing else, and the first copy of each
    comes in send order.  Returns the number of extra copies."""
    expect: dict[int, list[int]] = {}
    for i, key in sent:
        expect.setdefault(partition_for_key(key, nparts), []).append(i)
    assert set(got) <= set(expect), f"messages in partitions nothing was sent to: {set(got) - set(expect)}"
    dups = 0
    for part, want in expect.items():
        values = [number(m) for m in got.get(part, [])]
        counts = Counter(values)
        missing = sorted(set(want) - set(counts))
        assert not missing, f"partition {part}: {len(missing)} messages lost, first {missing[:10]}"
        assert set(counts) == set(want), f"partition {part}: messages that belong elsewhere"
        firsts = list(dict.fromkeys(values))
        assert firsts == want, f"partition {part}: not in send order"
        for m in got[part]:
            assert m.key == KEYS[number(m) % len(KEYS)]
        dups += sum(c - 1 for c in counts.values())
    return dups


MODES = {
    # MetaQ's AsyncMetaMessageProducer: send() never blocks (ordered by default with a spill_dir)
    "async": dict(block_on_full=False),
    # MetaQ's OrderedMessageProducer: one batch per partition out at a time, retries never overtaken;
    # send() waits for buffer space as usual, but spills while the broker is away
    "ordered": dict(ordered=True),
}
#: the stop/kill test also runs the async producer with idempotence, where a lost acknowledgement is
#: answered with the original offsets instead of being written again: no duplicates at all
STOP_MODES = dict(MODES, idempotent=dict(block_on_full=False, enable_idempotence=True))


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
@pytest.mark.parametrize("mode", sorted(STOP_MODES))
def test_a_broker_stopped_mid_stream_gets_every_message_in_send_order(tmp_path, mode, stop, record_property):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4")).start()
    p = Producer(b.url, spill_dir=tmp_path / "spill", request_timeout_ms=2000, **STOP_MODES[mode])
    futs, sent = [], []
    latencies: list[float] = []
    halt = threading.Event()
    crashed: list[BaseException] = []

    def sender():
        try:
            send_all()
        except BaseException as e:  # noqa: B902 - reported by the test
            crashed.append(e)
            raise

    def send_all():
        i = 0
        while not halt.is_set():
            key = KEYS[i % len(KEYS)]
            t0 = time.perf_counter()
            futs.append(p.send("t", b"%d" % i, key=key))
            latencies.append(time.perf_counter() - t0)
            sent.append((i, key))
            i += 1
            if i % 25 == 0:
                time.sleep(0.002)  # about 10k messages/s

    th = threading.Thread(target=sender)
    try:
        p.partitions_for("t")
        th.start()
        wait_for(lambda: len(futs) > 3000 and futs[2000].done(), 30, "messages acknowledged before the stop")
        if stop == "sigterm":
            b.stop()
        else:
            b.kill()
            b.stop()  # reaps and cleans up after the dead broker
        sent_at_stop = len(sent)
        wait_for(lambda: crashed or len(sent) > sent_at_stop + 5000, 30, "send() to go on returning")
        assert not crashed
        assert p.metrics()["spilled_messages"] > 2000
        b.start()  # same port, same data directory
        wait_for(lambda: p.metrics()["resent_messages"] > 0, 60, "re-sends after the restart")
        time.sleep(0.5)
        halt.set()
        th.join()
        p.flush(120)
        m = p.metrics()
    finally:
        halt.set()
        if th.is_alive():
            th.join()
        p.close(30)
    try:
        assert not crashed
        assert all(f.exception() is None for f in futs)
        if mode == "idempotent":
            assert p.producer_id >= 0
        assert m["spilled_messages"] > 2000 and m["spill_pending_messages"] == 0 and not m["broker_down"]
        # what was spilled, and what waited in memory when the broker went (moved to the journal then)
        assert m["resent_messages"] == m["spilled_messages"] + m["spill_moved_messages"]
        assert m["spill_failed_messages"] == 0
        dups = check_partitions(consume_all(b.url, "t"), sent)
    finally:
        b.stop()
    if mode == "idempotent":
        assert dups == 0, "the broker wrote a retried batch twice despite its producer id and sequence"
    lat = sorted(latencies)
    record_property("duplicates", dups)
    record_property("send_p99_us", round(lat[int(len(lat) * 0.99)] * 1e6, 1))
    print(f"\n{mode}/{stop}: {len(sent)} sent, {m['spilled_messages']} spilled, {m['spill_moved_messages']} moved "
          f"from memory, all re-sent, {dups} duplicates "
          f"(batches whose acknowledgement the stop lost), send() p50 {lat[len(lat) // 2] * 1e6:.1f} us, "
          f"p99 {lat[int(len(lat) * 0.99)] * 1e6:.1f} us, max {lat[-1] * 1e3:.1f} ms")


_SPILLING_CHILD = textwrap.dedent("""
    import sys, time
    from hpbroker.client import Producer
    url, spill_dir, mode = sys.argv[1:4]
    knobs = dict(block_on_full=False) if mode == "async" else dict(ordered=True)
    p = Producer(url, spill_dir=spill_dir, request_timeout_ms=1000, **knobs)
    keys = [b"k%d" % i for i in range(8)]
    i = 0
    while True:
        p.send("t", b"%d" % i, key=keys[i % 8])
        i += 1
        if i % 500 == 0:
            print(i, p.metrics()["spill_synced_messages"], flush=True)
            time.sleep(0.005)
""")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_producer_killed_while_spilling_resends_the_spill_after_a_restart(tmp_path, mode):
    """No broker at all: the child does not even know the partition count,
    so everything is spilled with partition -1.  After kill -9 and a
    restart with the same spill_dir, everything that was durable in the
    journal reaches the broker once, each key in its partition, in order."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    child = subprocess.Popen([sys.executable, "-c", _SPILLING_CHILD, url, str(tmp_path / "spill"), mode],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    synced = 0
    try:
        for line in child.stdout:
            sent, synced = map(int, line.split())
            if synced >= 20_000:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert synced >= 20_000, "the child stopped before spilling enough"
    b = BrokerProcess(tmp_path / "data", port=port, args=("--partitions", "4")).start()
    try:
        with Producer(url, spill_dir=tmp_path / "spill", **MODES[mode]) as p:
            recovered = p.metrics()["spill_recovered_messages"]
            assert recovered >= synced
            p.flush(120)
            m = p.metrics()
        assert m["resent_messages"] == recovered and m["spill_pending_messages"] == 0
        got = consume_all(url, "t")
    finally:
        b.stop()
    dups = check_partitions(got, [(i, KEYS[i % 8]) for i in range(recovered)])
    assert dups == 0  # the broker never had any of them before
    with Producer(url, spill_dir=tmp_path / "spill") as p:  # a third start finds nothing left
        assert p.metrics()["spill_recovered_messages"] == 0


@pytest.mark.parametrize("ordered", [True, False])
def test_a_full_buffer_spills_and_nothing_is_duplicated(tmp_path, ordered):
    """block_on_full=False with the broker up but its disk stalled (the
    writer suspended): once buffer_memory is full, send() spills instead of
    waiting; once the disk is back everything lands once, in order (nothing
    is retried here, so without ``ordered`` too)."""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4")).start()
    writer = psutil.Process(b.child_pid("writer0"))
    try:
        with Producer(b.url, spill_dir=tmp_path / "spill", block_on_full=False, buffer_memory=100_000,
                      request_timeout_ms=60_000, ordered=ordered) as p:
            p.partitions_for("t")
            writer.suspend()
            try:
                t0 = time.perf_counter()
                futs = [p.send("t", b"%d" % i + b"." * 1000, key=KEYS[i % 8]) for i in range(3000)]
                took = time.perf_counter() - t0
                m = p.metrics()
                assert m["spilled_messages"] > 2000 and not m["broker_down"]
                assert m["buffer_used_bytes"] <= 100_000 + 1100
            finally:
                writer.resume()
            p.flush(120)
            m = p.metrics()
            assert [f.result().partition for f in futs] == [partition_for_key(KEYS[i % 8], 4) for i in range(3000)]
        got = consume_all(b.url, "t")
    finally:
        b.stop()
    assert check_partitions(got, [(i, KEYS[i % 8]) for i in range(3000)]) == 0
    assert m["resent_messages"] == m["spilled_messages"]
    print(f"\n3000 sends of 1 KB with the disk stalled took {took * 1e3:.0f} ms; {m['spilled_messages']} spilled")


def test_close_during_an_outage_puts_memory_back_in_front_of_the_spill(tmp_path):
    """The broker stops writing; the producer holds some messages in memory
    (sent, unanswered) and spills the rest; close() puts the in-memory ones
    in the journal, marked to go first.  The broker then dies without having
    written them, and the next producer on the directory delivers all of
    them once, in send order."""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4")).start()
    try:
        p = Producer(b.url, spill_dir=tmp_path / "spill", ordered=True, block_on_full=False, buffer_memory=30_000,
                     request_timeout_ms=60_000)
        for i in range(10):
            p.send("t", b"%d" % i, key=KEYS[0])
        p.flush(30)
        before = p.metrics()["spilled_messages"]  # the first ones, sent before the partition count was known
        psutil.Process(b.child_pid("writer0")).suspend()  # nothing more becomes durable
        futs = [p.send("t", b"%d" % i + b"." * 200, key=KEYS[0]) for i in range(10, 600)]
        wait_for(lambda: p.metrics()["spill_synced_messages"] == p.metrics()["spilled_messages"], 30,
                 "the spill to be durable")
        spilled = p.metrics()["spilled_messages"] - before
        in_memory = 590 - spilled
        assert in_memory > 0 and spilled > 0
        p.close(timeout=1)
        m = p.metrics()
        assert m["spill_put_back_messages"] == in_memory
        errors = [f.exception(0) for f in futs]
        assert all(isinstance(e, BrokerError) and e.code == ErrorCode.BROKER_SHUTTING_DOWN
                   and "spill journal" in e.message for e in errors)
        b.kill()  # the suspended writer never wrote them
        b.stop()
        b.start()
        with Producer(b.url, spill_dir=tmp_path / "spill", ordered=True) as p2:
            assert p2.metrics()["spill_recovered_messages"] == 590
            p2.flush(60)
        got = consume_all(b.url, "t")
    finally:
        b.stop()
    part = partition_for_key(KEYS[0], 4)
    assert [number(x) for x in got[part]] == list(range(600))


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="needs a spill_dir"):
        Producer("tcp://127.0.0.1:1", block_on_full=False)
    with pytest.raises(ValueError, match="needs a spill_dir"):
        Producer("tcp://127.0.0.1:1", ordered=True)
    with pytest.raises(ValueError, match="acks=1"):
        Producer("tcp://127.0.0.1:1", acks=0, spill_dir=tmp_path)
    with pytest.raises(ValueError, match="partition count"):
        Producer("tcp://127.0.0.1:1", topic_partitions={"t": 0})
    with Producer("tcp://127.0.0.1:1", spill_dir=tmp_path / "s", block_on_full=False) as p:
        with pytest.raises(JournalLocked, match="already open in this process"):
            Producer("tcp://127.0.0.1:1", spill_dir=tmp_path / "s")
        assert p.metrics()["spilled_messages"] == 0
        p.close(timeout=0.1)


def test_send_returns_at_once_without_any_broker(tmp_path):
    """Nothing listens: send() with block_on_full=False returns for every
    message (the buffer fills, then the journal takes the rest), and a
    configured partition count places keys without metadata."""
    url = f"tcp://127.0.0.1:{free_port()}"
    with Producer(url, spill_dir=tmp_path / "s", block_on_full=False, buffer_memory=50_000,
                  request_timeout_ms=500, topic_partitions={"t": 6}) as p:
        futs = [p.send("t", b"x" * 100, key=KEYS[i % 8]) for i in range(20_000)]
        m = p.metrics()
        assert m["spilled_messages"] + m["buffer_used_bytes"] // 100 >= 19_000
        wait_for(lambda: p.metrics()["broker_down"], 30, "the silence to count as down")
        wait_for(lambda: p.metrics()["spill_synced_messages"] == p.metrics()["spilled_messages"], 30, "the syncs")
        p.close(timeout=0.2)
    assert not any(f.exception(0) is None for f in futs[:10])
    with Producer(url, spill_dir=tmp_path / "s", block_on_full=False) as p:
        assert p.metrics()["spill_recovered_messages"] == 20_000
        p.close(timeout=0.1)


def test_spilled_messages_keep_their_key_headers_and_timestamp(tmp_path):
    """Through the journal (a put-back record and spilled ones, from send and
    send_batch) a message keeps its key, headers and send timestamp."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    ts = 1_600_000_000_000
    with Producer(url, spill_dir=tmp_path / "s", block_on_full=False, buffer_memory=1,
                  topic_partitions={"h": 4}) as p:
        first = p.send("h", b"v0", key=b"a", headers=[("trace", b"\x01\x02")], timestamp_ms=ts)  # held in memory
        p.send("h", b"v1", key=b"a", headers=[("trace", b"\x03"), ("n", b"")], timestamp_ms=ts + 1)  # spilled
        p.send("h", b"v2", key=b"a")
        whole = p.send_batch("h", [b"b0", b"b1", b"b2"], partition=2, keys=[b"x", None, b"z"],
                             headers=[[("i", b"0")], None, [("i", b"2")]], timestamp_ms=ts + 5)
        m = p.metrics()
        assert m["spilled_messages"] == 5 and m["buffer_used_bytes"] > 0
        p.close(timeout=0.2)
    assert first.exception(0).code == ErrorCode.BROKER_SHUTTING_DOWN
    assert whole.exception(0).code == ErrorCode.BROKER_SHUTTING_DOWN
    b = BrokerProcess(tmp_path / "data", port=port, args=("--partitions", "4")).start()
    try:
        with Producer(url, spill_dir=tmp_path / "s") as p:
            assert p.metrics()["spill_recovered_messages"] == 6
            p.flush(60)
        got = consume_all(url, "h")
    finally:
        b.stop()
    pa = partition_for_key(b"a", 4)
    msgs = got[pa] if pa != 2 else [x for x in got[pa] if x.value.startswith(b"v")]
    assert [(x.value, x.key, x.headers) for x in msgs] == [
        (b"v0", b"a", [("trace", b"\x01\x02")]), (b"v1", b"a", [("trace", b"\x03"), ("n", b"")]), (b"v2", b"a", None)]
    assert [x.timestamp for x in msgs[:2]] == [ts, ts + 1] and msgs[2].timestamp > ts
    batch_msgs = [x for x in got[2] if x.value.startswith(b"b")]
    assert [(x.value, x.key, x.headers, x.timestamp) for x in batch_msgs] == [
        (b"b0", b"x", [("i", b"0")], ts + 5), (b"b1", None, None, ts + 5), (b"b2", b"z", [("i", b"2")], ts + 5)]


def test_a_spilled_message_the_broker_refuses_for_good_is_dropped_and_reported(tmp_path):
    """A non-retriable answer to a re-send (a partition the topic does not
    have) drops that message from the journal, fails its future and counts
    it; the partition's neighbours go on."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    b = None
    with Producer(url, spill_dir=tmp_path / "s", block_on_full=False, buffer_memory=1,
                  topic_partitions={"t": 4}) as p:
        f0 = p.send("t", b"m0", partition=0)  # held in memory (the first always fits)
        f1 = p.send("t", b"m1", partition=99)  # spilled: the buffer is full
        f2 = p.send("t", b"m2", partition=1)  # spilled
        b = BrokerProcess(tmp_path / "data", port=port, args=("--partitions", "4")).start()
        try:
            p.flush(60)
            m = p.metrics()
            got = consume_all(url, "t")
        finally:
            b.stop()
    assert f0.result().partition == 0 and f2.result().partition == 1
    assert f1.exception().code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert m["spill_failed_messages"] == 1 and m["resent_messages"] == 1 and m["spill_pending_messages"] == 0
    assert {part: [x.value for x in msgs] for part, msgs in got.items()} == {0: [b"m0"], 1: [b"m2"]}


_STRANDED_CHILD = textwrap.dedent("""
    import sys, time
    from hpbroker.client import Producer
    url, spill_dir = sys.argv[1:3]
    keys = [b"k%d" % i for i in range(8)]
    p = Producer(url, spill_dir=spill_dir, ordered=True, request_timeout_ms=120_000, linger_ms=5)
    p.partitions_for("t")
    for i in range(200):
        p.send("t", b"%d" % i, key=keys[i % 8])
    p.flush(60)
    print("READY", flush=True)
    sys.stdin.readline()  # the parent stalls the broker's disk
    for i in range(200, 20_200):
        p.send("t", b"%d" % i, key=keys[i % 8])
        if i % 100 == 0:
            time.sleep(0.002)
    print("SENT", flush=True)
    while True:
        m = p.metrics()
        print(m["spilled_messages"], m["spill_moved_messages"], m["spill_synced_messages"],
              m["spill_pending_messages"], flush=True)
        time.sleep(0.05)
""")


def test_what_waits_in_memory_when_the_broker_dies_survives_a_producer_kill(tmp_path):
    """The broker's disk stalls (its writer suspended) under an ordered
    producer, so its messages wait in memory: one batch per partition sent,
    the rest parked.  The broker is then killed: the producer moves what it
    held to the journal (the sent batches too: their connection is gone, so
    their outcome is unknown, as a retry's would be).  Then the producer is
    killed -9.  After restarting both, every message is in its partition
    once, in send order: nothing lived only in the dead producer's memory."""
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "4")).start()
    child = subprocess.Popen([sys.executable, "-c", _STRANDED_CHILD, b.url, str(tmp_path / "spill")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert child.stdout.readline().strip() == "READY"
        psutil.Process(b.child_pid("writer0")).suspend()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "SENT"
        b.kill()  # with the writer suspended: nothing of the last 20,000 was written
        b.stop()
        for line in child.stdout:
            spilled, moved, synced, pending = map(int, line.split())
            if moved and synced >= spilled + moved and pending == 20_000:
                break
        else:
            raise AssertionError("the child ended before moving its messages")
        assert moved > 1000, "most of the messages were waiting in memory when the broker died"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    b.start()
    try:
        with Producer(b.url, spill_dir=tmp_path / "spill") as p:
            assert p.metrics()["spill_recovered_messages"] == 20_000
            p.flush(120)
        got = consume_all(b.url, "t")
    finally:
        b.stop()
    assert check_partitions(got, [(i, KEYS[i % 8]) for i in range(20_200)]) == 0
