"""MetaQ's text protocol against a real broker (docs/protocol-text.md).

The MetaQ side is tests/metaq_client.py, written from MetaQ's wire format
only; the other side is hpbroker's own ZeroMQ Producer and Consumer.  One
broker serves the module (small segments, so offsets cross segments; a
short idle timeout, few connections, small bodies, so the limits can be
reached); the restart test restarts it.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from metaq_client import Message, MetaQClient, MetaQError, Moved, checksum, parse_messages, put_command
from pymemcache.client.base import Client as Memcache

from brokerproc import BrokerProcess, free_port
from hpbroker import Consumer, Producer

CONFIG = """
[log]
segment_bytes = 65536
[text_protocol]
idle_timeout_ms = 2000
max_connections = 12
max_body_bytes = 4096
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    (d / "broker.toml").write_text(CONFIG)
    b = BrokerProcess(d / "data", args=("--partitions", "2", "--config", str(d / "broker.toml"),
                                        "--text-port", str(free_port())))
    b.text_port = int(b.args[b.args.index("--text-port") + 1])
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mq(broker):
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        yield c


def raw(broker) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", broker.text_port), timeout=10)
    return s


def recv_until(s: socket.socket, n_bytes: int | None = None, marker: bytes | None = None, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    data = b""
    while (n_bytes is None or len(data) < n_bytes) and (marker is None or marker not in data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def zmq_read(broker, topic: str, n: int, timeout: float = 20.0) -> list:
    c = Consumer(broker.url, topic, auto_offset_reset="earliest")
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += c.poll(timeout_ms=500)
    finally:
        c.close()
    return sorted(got, key=lambda m: (m.partition, m.offset))


# -- put and get, both ways ---------------------------------------------------------------------


def test_puts_of_both_forms_are_read_back_by_a_zeromq_consumer(broker, mq):
    a = mq.put("both", 0, b"new form")
    b = mq.put("both", 0, b"with attribute", attribute=b"k=v")
    c = mq.put("both", 1, b"old form", old_form=True)
    assert [a[1], b[1], c[1]] == [0, 0, 1] and a[2] < b[2]
    got = zmq_read(broker, "both", 3)
    assert [(m.partition, m.value) for m in got] == [(0, b"new form"), (0, b"with attribute"), (1, b"old form")]
    headers = [dict(m.headers) for m in got]
    assert [struct.unpack(">q", h["metaq.id"])[0] for h in headers] == [a[0], b[0], c[0]]
    assert headers[1]["metaq.attribute"] == b"k=v" and "metaq.attribute" not in headers[0]
    assert got[0].key is None


def test_zeromq_records_reach_a_metaq_consumer_with_their_attribute(broker, mq):
    with Producer(broker.url) as p:
        p.send("fromzmq", b"plain", partition=0).get(10)
        p.send("fromzmq", b"tagged", partition=0, headers=[("metaq.attribute", b"colour=blue")]).get(10)
        p.send("fromzmq", b"keyed", key=b"k", partition=0, headers=[("other", b"x")]).get(10)
    msgs, _ = mq.consume("fromzmq", "g", 0, 0)
    assert [(m.data, m.attribute, m.flag) for m in msgs] == [(b"plain", None, 0), (b"tagged", b"colour=blue", 1),
                                                              (b"keyed", None, 0)]
    ids = [m.msg_id for m in msgs]
    assert len(set(ids)) == 3 and all(i < 0 for i in ids)  # not MetaQ's: derived, never a snowflake


def test_a_metaq_consumer_reads_what_metaq_producers_put_with_the_same_ids_and_offsets(broker, mq):
    sent = mq.put_many("round", 1, [b"v%d" % i for i in range(300)])
    sent += [mq.put("round", 1, b"attr", attribute=b"a=1")]
    msgs, end = mq.consume("round", "g", 1, 0, max_size=2000)
    assert [m.data for m in msgs] == [b"v%d" % i for i in range(300)] + [b"attr"]
    assert [(m.msg_id, m.offset) for m in msgs] == [(i, off) for i, _, off in sent]
    assert msgs[-1].attribute == b"a=1"


# -- offsets: store, compare, resume ---------------------------------------------------------------


def test_offsets_store_compare_and_resume_across_segments_and_a_restart(broker):
    values = [b"%05d" % i + b"x" * 400 for i in range(600)]  # ~250 KB: several 64 KiB segments
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        sent = []
        for i in range(0, len(values), 50):
            sent += c.put_many("resume", 0, values[i:i + 50])
        offsets = [off for _, _, off in sent]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)  # later message, larger offset
        first, mid_offset = c.consume("resume", "g", 0, 0, max_size=10_000, limit=250)
        assert [m.data for m in first] == values[:250]
        assert mid_offset == offsets[250]  # the offset a consumer stores is the next message's put offset
    with MetaQClient("127.0.0.1", broker.text_port) as c:  # another consumer resumes from the stored offset
        rest, end = c.consume("resume", "g", 0, mid_offset, max_size=10_000)
        assert [m.data for m in rest] == values[250:]
        assert [m.offset for m in first + rest] == offsets
        assert c.offset("resume", "g", 0, end + 123) == end  # past the end: the end
        max_offsets = {int(line[6]) for line in c.stats("offsets") if line[0] == "resume" and line[2] == "0"}
        assert max_offsets == {end}
    broker.stop()
    broker.start()
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        again, end2 = c.consume("resume", "g", 0, mid_offset, max_size=10_000)
        assert [(m.offset, m.data, m.msg_id) for m in again] == [(m.offset, m.data, m.msg_id) for m in rest]
        assert end2 == end
        later = c.put("resume", 0, b"after the restart")
        assert later[2] == end  # the next put lands where the consumer waits


def test_a_get_inside_a_message_is_moved_to_its_start_and_below_the_start_to_the_start(broker, mq):
    sent = mq.put_many("moves", 0, [b"a" * 10, b"b" * 10])
    with pytest.raises(Moved) as m:
        mq.get("moves", "g", 0, sent[1][2] + 3)
    assert m.value.offset == sent[1][2]
    with pytest.raises(Moved) as m:
        mq.get("moves", "g", 0, -100)
    assert m.value.offset == 0
    with pytest.raises(MetaQError) as e:
        mq.get("moves", "g", 0, sent[1][2] + 30)  # the end
    assert e.value.code == 404
    with pytest.raises(MetaQError) as e:
        mq.get("moves", "g", 0, 0, max_size=0)
    assert e.value.code == 400
    with pytest.raises(MetaQError) as e:
        mq.get("nosuchtopic", "g", 0, 0)
    assert e.value.code == 404 and "is not exists" in e.value.message
    small = mq.get("moves", "g", 0, 0, max_size=15)  # smaller than the first message: a cut copy, as MetaQ sends
    assert small == []


# -- stats ------------------------------------------------------------------------------------------


def test_memcached_tools_read_the_counters_after_a_known_produce(broker, mq):
    m = Memcache(("127.0.0.1", broker.text_port))
    before = m.stats()
    mq.put_many("counted", 0, [b"x"] * 7)
    mq.put("counted", 1, b"y", old_form=True)
    stats = m.stats()
    assert stats[b"cmd_put"] - before[b"cmd_put"] == 8
    assert stats[b"put_failed"] == before[b"put_failed"]
    assert stats[b"curr_connections"] >= 2 and stats[b"total_connections"] >= before[b"total_connections"]
    assert stats[b"version"].startswith(b"hpbroker-")
    assert stats[b"broker_role"] == b"standalone" and b"ring_a0w0_fill_bytes" in stats
    # hpbroker's own: the writers' group commits and fdatasyncs of those 8 acknowledged (durable) puts
    for k in (b"broker_group_commit_rounds", b"broker_fdatasync_count", b"broker_appended_bytes"):
        assert stats[k] > before[k], k
    assert stats[b"broker_appended_bytes"] - before[b"broker_appended_bytes"] >= 8 * 20  # 8 bodies and their records
    assert stats[b"broker_fdatasync_us_p99"] > 0 and stats[b"broker_group_commit_batches_avg"] >= 1
    topics = m.stats("topics")
    m.close()
    assert topics[b"counted:message_count"] == 8 and topics[b"counted:partitions"] == 2
    metaq = {line[0]: line[1] for line in mq.stats("") if len(line) == 2}
    assert int(metaq["cmd_put"]) == stats[b"cmd_put"] + 0 and "config_checksum" in metaq
    item = {line[0]: line[1] for line in mq.stats("counted") if len(line) == 2}
    assert (item["resultCode"], item["partitions"], item["message_count"]) == ("0", "2", "8")
    assert item["topic_realtime_put"].startswith("Count=8,")
    assert [line[0] for line in mq.stats("help")][:3] == ["(empty)", "topics", "offsets"]


def test_stats_config_and_version_in_both_formats(broker, mq):
    assert mq.version().startswith("hpbroker-")
    m = Memcache(("127.0.0.1", broker.text_port))
    assert m.version().startswith(b"hpbroker-")
    m.close()
    opaque = mq.next_opaque()
    mq.sock.sendall(b"stats config %d\r\n" % opaque)
    kind, code, got, body = mq.read_reply()
    assert (code, got) == (200, opaque) and b"[text_protocol]" in body and b"idle_timeout_ms = 2000" in body


# -- bad input ----------------------------------------------------------------------------------------


def test_bad_input_gets_metaq_errors_and_the_connection_goes_on(broker):
    with raw(broker) as s:
        body = b"payload"
        s.sendall(b"put bad 0 7 0 12345 1\r\n" + body  # wrong checksum
                  + b"put bad 0 5000 0 -1 2\r\n" + b"z" * 5000  # larger than max_body_bytes: skipped
                  + b"get bad g x 0 100 3\r\n"  # a field that is not a number
                  + b"frobnicate\r\n"  # unknown verb
                  + b"put bad 0 %d 1 %d 4\r\n" % (len(body), checksum(body)) + body  # attribute flag, no room for it
                  + b"transaction TX:s s BEGIN 5\r\n"  # a malformed key (tests/test_text_transactions.py has more)
                  + b"transaction TX:s:1 s END 55\r\n"  # one way: never answered, as MetaQ
                  + b"version 6\r\n")
        c = MetaQClient.over(s)
        answers = [c.read_reply() for _ in range(3)]
        assert c.read_line() == b"ERROR"
        answers += [c.read_reply() for _ in range(3)]
    assert [(code, opaque) for _, code, opaque, _ in answers] == [(400, 1), (400, 2), (400, 3), (400, 4), (400, 5),
                                                                 (200, 6)]
    messages = [body for *_, body in answers]
    assert b"checksum mismatch" in messages[0] and b"larger than the limit" in messages[1]
    assert b"partition" in messages[2] and b"attribute length" in messages[3]
    assert b"Illegal transaction key" in messages[4] and messages[5].startswith(b"hpbroker-")


def test_an_unreadable_put_closes_the_connection_and_others_are_served(broker, mq):
    with raw(broker) as s:
        s.sendall(b"put bad 0 lots 0 -1 1\r\nabcversion 2\r\n")
        c = MetaQClient.over(s)
        kind, code, opaque, body = c.read_reply()
        assert (code, opaque) == (400, 1) and b"value-length" in body
        assert recv_until(s) == b""  # closed: version 2 is never answered
    assert mq.version().startswith("hpbroker-")


def test_a_line_too_long_is_refused_and_closed(broker):
    with raw(broker) as s:
        s.sendall(b"get " + b"x" * 5000)
        data = recv_until(s)
    assert data.startswith(b"CLIENT_ERROR command line longer than")


def test_a_lying_length_and_a_half_open_client_are_closed_when_idle_while_others_go_on(broker, mq):
    liar = raw(broker)
    liar.sendall(b"put bad 0 100 0 -1 1\r\nshort")  # 95 bytes never come
    silent = raw(broker)
    silent.sendall(b"get bad g 0 0")  # half a line, then nothing
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        assert mq.version().startswith("hpbroker-")  # served meanwhile
    assert recv_until(liar, timeout=10) == b""  # closed by the broker after idle_timeout_ms
    assert recv_until(silent, timeout=10) == b""
    assert time.monotonic() - t0 >= 1.5
    liar.close()
    silent.close()


def test_connections_past_the_limit_are_refused(broker):
    m = Memcache(("127.0.0.1", broker.text_port))
    open_now = m.stats()[b"curr_connections"]  # this one included
    socks = []
    try:
        for _ in range(12 - open_now):  # each of these is taken (answered)
            s = raw(broker)
            socks.append(s)
            s.sendall(b"version 1\r\n")
            assert recv_until(s, marker=b"hpbroker-0.1.0").endswith(b"hpbroker-0.1.0")
        extra = raw(broker)
        assert recv_until(extra) == b"SERVER_ERROR too many open connections\r\n"
        extra.close()
    finally:
        for s in socks:
            s.close()
        deadline = time.monotonic() + 10
        while m.stats()[b"curr_connections"] > open_now and time.monotonic() < deadline:
            time.sleep(0.05)  # the broker has seen them go
        m.close()


def test_pipelined_mixed_requests_are_answered_in_order(broker):
    with raw(broker) as s:
        reqs = []
        for i in range(40):
            reqs.append(put_command("pipe", i % 2, b"m%d" % i, 1000 + i))
            if i % 10 == 9:
                reqs.append(b"version %d\r\n" % (2000 + i))
                reqs.append(b"get pipe g 0 0 100000 %d\r\n" % (3000 + i))
        s.sendall(b"".join(reqs))
        c = MetaQClient.over(s)
        opaques = [c.read_reply()[2] for _ in reqs]
    expected = []
    for i in range(40):
        expected.append(1000 + i)
        if i % 10 == 9:
            expected += [2000 + i, 3000 + i]
    assert opaques == expected


def test_quit_closes_after_the_answers_before_it(broker):
    with raw(broker) as s:
        s.sendall(b"version 1\r\nquit\r\nversion 2\r\n")
        data = recv_until(s)
    assert data == b"result 200 14 1\r\nhpbroker-0.1.0"


def test_parse_messages_reads_what_message_set_layout_says():
    # the client's own reading of METAQ.md's layout, checked against a hand-made message
    payload = struct.pack(">i", 2) + b"ab" + b"data"
    msg = struct.pack(">iiqi", len(payload), checksum(payload), 42, 1) + payload
    (m,), used = parse_messages(msg + msg[:10], 100)
    assert m == Message(100, 42, 1, b"ab", b"data", len(msg)) and used == len(msg)


def test_a_client_that_does_not_read_is_held_to_its_bound_and_closed_while_others_go_on(broker, mq):
    flood = raw(broker)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flood.settimeout(0.2)
    sent = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 8:  # asks for answers it never reads
            try:
                sent += flood.send(b"version 1\r\n" * 4096)
            except (socket.timeout, BlockingIOError):
                assert mq.version().startswith("hpbroker-")  # the others are served meanwhile
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            pytest.fail("the broker kept a client that reads nothing")
    finally:
        flood.close()
    # it stopped reading the flood once its unsent answers passed max_pending_bytes (8 MiB),
    # so the kernel's buffers filled and the flood could not send on; then it closed it
    assert sent < 64 << 20


def test_acknowledged_puts_survive_kill_9(broker):
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        sent = []
        for i in range(10):
            sent += c.put_many("durable", 1, [b"d%04d" % (i * 100 + k) for k in range(100)])
    broker.kill()  # every process of the broker, -9, right after the last answer
    broker.start()
    with MetaQClient("127.0.0.1", broker.text_port) as c:
        msgs, _ = c.consume("durable", "g", 1, 0)
    assert [m.data for m in msgs] == [b"d%04d" % i for i in range(1000)]
    assert [(m.msg_id, m.offset) for m in msgs] == [(i, off) for i, _, off in sent]


def test_hpbroker_stats_prints_the_text_ports_items(broker, mq):
    import subprocess
    import sys

    mq.put_many("cli", 0, [b"a", b"b", b"c"])
    r = subprocess.run([sys.executable, "-m", "hpbroker", "stats", "cli", "--broker", broker.url,
                        "--text-port", str(broker.text_port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 2)[1:] for line in r.stdout.splitlines() if line.startswith("STAT "))
    assert (lines["resultCode"], lines["message_count"]) == ("0", "3")
    assert r.stdout.endswith("END\n")


def test_several_listener_processes_share_the_port_ids_offsets_and_counters(tmp_path):
    b = BrokerProcess(tmp_path / "data", args=("--partitions", "1", "--text-port", str(free_port()),
                                               "--text-processes", "2"))
    port = int(b.args[b.args.index("--text-port") + 1])
    b.start()
    try:
        assert b.child_pid("text0") != b.child_pid("text1")
        clients = [MetaQClient("127.0.0.1", port) for _ in range(8)]  # the kernel spreads them over both
        sent = []
        for round_ in range(5):
            for k, c in enumerate(clients):
                sent += c.put_many("shared", 0, [b"%d-%d-%d" % (k, round_, i) for i in range(40)])
        pids = set()
        for c in clients:
            stats = {line[0]: line[1] for line in c.stats("") if len(line) == 2}
            pids.add(stats["text_listener_pid"])
            assert int(stats["cmd_put"]) == 1600 and int(stats["text_listeners"]) == 2  # both processes' puts
            assert int(stats["curr_connections"]) >= 8
        assert len(pids) == 2  # both served
        ids = [i for i, _, _ in sent]
        assert len(set(ids)) == len(ids)  # two processes, no msgId twice
        msgs, _ = clients[0].consume("shared", "g", 0, 0)
        assert sorted((m.msg_id, m.offset) for m in msgs) == sorted((i, off) for i, _, off in sent)
        for c in clients:
            c.close()
    finally:
        b.stop()


def test_a_sync_slave_refuses_puts_and_serves_the_masters_messages_at_the_same_offsets(tmp_path):
    cfg = tmp_path / "repl.toml"
    cfg.write_text('[replication]\nmode = "sync"\nreplica_lag_max_ms = 1500\nack_interval_ms = 50\n'
                   "[ring]\ndead_after_ms = 60000\n")
    mport, sport = free_port(), free_port()
    m = BrokerProcess(tmp_path / "m", args=("--config", str(cfg), "--role", "master", "--broker-id", "1",
                                            "--partitions", "1", "--text-port", str(mport))).start()
    try:
        s = BrokerProcess(tmp_path / "s", args=("--config", str(cfg), "--role", "slave", "--master", m.url,
                                                "--broker-id", "2", "--partitions", "1", "--text-port", str(sport)))
        s.start()
        try:
            with MetaQClient("127.0.0.1", mport) as c:
                deadline = time.monotonic() + 30
                while True:  # until the slave is in sync (acks=all puts need it): 503 meanwhile
                    try:
                        c.put("probe", 0, b"?")
                        break
                    except MetaQError as e:
                        assert e.code == 503 and time.monotonic() < deadline, e
                        time.sleep(0.2)
                sent = c.put_many("repl", 0, [b"r%d" % i for i in range(50)])
            with MetaQClient("127.0.0.1", sport) as c:
                with pytest.raises(MetaQError) as e:
                    c.put("repl", 0, b"to a slave")
                assert e.value.code == 403
                deadline = time.monotonic() + 30
                got: list = []
                while len(got) < 50 and time.monotonic() < deadline:
                    got, _ = c.consume("repl", "g", 0, 0)
                    time.sleep(0.1)
            assert [(x.msg_id, x.offset, x.data) for x in got] == [(i, off, b"r%d" % k)
                                                                   for k, (i, _, off) in enumerate(sent)]
        finally:
            s.stop()
    finally:
        m.stop()
