"""Master-slave replication between real broker processes on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time

import psutil
import pytest

from brokerproc import BrokerProcess, free_port
from hpbroker import batch
from hpbroker.client.request import request
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import ErrorCode
from hpbroker.replication import messages as rm
from rawclient import RawClient

PARTITIONS = 4


def config(tmp_path, name: str, mode: str = "sync", extra: str = "", lag_ms: int = 1500) -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(
        f'[replication]\nmode = "{mode}"\nreplica_lag_max_ms = {lag_ms}\nack_interval_ms = 50\n{extra}\n'
        "[ring]\ndead_after_ms = 60000\n"
    )
    return str(p)


def master(tmp_path, name: str, port=None, mode="sync", extra="", broker_id=1, writers=1, lag_ms=1500) -> BrokerProcess:
    return BrokerProcess(tmp_path / name, port=port, args=(
        "--config", config(tmp_path, name, mode, extra, lag_ms), "--role", "master", "--broker-id", str(broker_id),
        "--partitions", str(PARTITIONS), "--writers", str(writers))).start()


def slave(tmp_path, name: str, of: BrokerProcess | str, port=None, mode="sync", extra="", broker_id=2,
          cluster=None, writers=1, data_root=None) -> BrokerProcess:
    url = of if isinstance(of, str) else of.url
    args = ["--config", config(tmp_path, name, mode, extra), "--role", "slave", "--master", url,
            "--broker-id", str(broker_id), "--partitions", str(PARTITIONS), "--writers", str(writers)]
    if cluster:
        args += ["--cluster-id", cluster]
    return BrokerProcess((data_root or tmp_path) / name, port=port, args=tuple(args)).start()


def zmq_push(endpoint: str):
    import zmq

    s = zmq.Context.instance().socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def stats(b: BrokerProcess) -> dict:
    return request(b.url, lambda i: m.Stats(id=i), 5000).stats


def wait_until(pred, timeout=30.0, what="condition", state=None):
    """Poll ``pred`` until it holds; on timeout fail with ``state()``, what was seen instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state else ""))


def caught_up(master_b: BrokerProcess, slave_b: BrokerProcess) -> bool:
    """Every partition's high watermark is the same on both.  (A master's
    ListOffsets says how far consumers may read, which in sync mode is what
    the slave holds; its stats count every message it made durable.)"""
    if stats(master_b).get("messages") != stats(slave_b).get("messages"):
        return False
    mc, sc = RawClient(master_b.url), RawClient(slave_b.url)
    try:
        for p in range(PARTITIONS):
            a = mc.call(m.ListOffsets(id=mc.next_id(), topic="rep", partition=p, spec=m.LATEST))[0]
            b = sc.call(m.ListOffsets(id=sc.next_id(), topic="rep", partition=p, spec=m.LATEST))[0]
            ao = 0 if a.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION else (a.offset if a.code == 0 else None)
            bo = 0 if b.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION else (b.offset if b.code == 0 else None)
            if ao is None or ao != bo:
                return False
        return True
    finally:
        mc.close(), sc.close()


def produce_stream(url: str, tag: str, seconds: float, acks: int = -1, window: int = 16,
                   kill=None) -> dict[tuple[int, str], int]:
    """Pipelined 10-record batches over all partitions for ``seconds`` (or until
    ``kill`` is called mid-stream); returns {(partition, value of first record): base offset} of the acked."""
    c = RawClient(url, timeout_ms=2000)
    acked, inflight, seq = {}, {}, 0
    deadline = time.monotonic() + seconds
    killed = False
    while True:
        if not killed and time.monotonic() >= deadline:
            if kill is None:
                break
            kill()
            killed = True
        while not killed and len(inflight) < window:
            p = seq % PARTITIONS
            vals = [f"{tag}:{seq}:{j}".encode() for j in range(10)]
            req = m.Produce(id=c.next_id(), topic="rep", partition=p, acks=acks)
            c.send_frames(codec.encode_request(req, [batch.encode_batch(vals)]))
            inflight[req.id] = (p, vals[0].decode())
            seq += 1
        if not inflight:
            break
        try:
            rep, _ = c.recv(timeout_ms=1500 if killed else 10_000)
        except TimeoutError:
            if killed:
                break
            raise
        p, first = inflight.pop(rep.id)
        if rep.code == 0:
            acked[(p, first)] = rep.base_offsets[0]
    c.close()
    return acked


def assert_present(b: BrokerProcess, acked: dict[tuple[int, str], int]) -> None:
    c = RawClient(b.url)
    for p in range(PARTITIONS):
        recs = c.fetch_all("rep", p)
        assert [r.offset for r in recs] == list(range(len(recs)))
        where = {r.value.decode(): r.offset for r in recs}
        for (ap, first), off in acked.items():
            if ap == p:
                assert where.get(first) == off, f"acknowledged batch {first} (offset {off}) missing on partition {p}"
    c.close()


def promote(b: BrokerProcess, *flags: str) -> int:
    r = subprocess.run([sys.executable, "-m", "hpbroker", "promote", "--broker", b.url, *flags],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(re.search(r"leader epoch (\d+)", r.stdout).group(1))


def assert_log_verifies(data_dir) -> None:
    """``hpbroker log verify`` finds every batch of ``data_dir`` sound."""
    r = subprocess.run([sys.executable, "-m", "hpbroker", "log", "verify", str(data_dir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def compare(d1, d2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpbroker", "log", "verify", str(d1), "--compare", str(d2)],
                          capture_output=True, text=True, timeout=120)


def test_sync_failover_cycles_lose_no_acknowledged_message(tmp_path):
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    running = [a, b]
    try:
        acked_all: dict = {}
        cur_master, cur_slave = a, b
        epochs = []
        for cycle in range(3):
            wait_until(lambda: stats(cur_master).get("replication_slaves") and caught_up(cur_master, cur_slave),
                       60, "the slave to catch up")
            acked = produce_stream(cur_master.url, f"c{cycle}", 1.5, acks=-1, kill=cur_master.kill)
            assert acked, "nothing was acknowledged"
            acked_all.update(acked)
            epochs.append(promote(cur_slave))
            assert_present(cur_slave, acked_all)
            # the promoted slave takes produce now, and metadata names it as leader
            c = RawClient(cur_slave.url)
            md = c.call(m.Metadata(id=c.next_id(), topics=["rep"]))[0]
            assert md.role == "master" and md.topics[0].partitions[0].leader == int(cur_slave.args[cur_slave.args.index("--broker-id") + 1])
            c.close()
            # the old master rejoins as a slave of the new one
            old = cur_master
            old_id = old.args[old.args.index("--broker-id") + 1]
            rejoined = slave(tmp_path, old.data_dir.name, cur_slave, port=old.port, broker_id=int(old_id))
            running.append(rejoined)
            cur_master, cur_slave = cur_slave, rejoined
        assert epochs == sorted(epochs) and len(set(epochs)) == 3
        wait_until(lambda: caught_up(cur_master, cur_slave), 60, "the last slave to catch up")
        assert_present(cur_master, acked_all)
        assert_present(cur_slave, acked_all)
    finally:
        for p in running:
            p.stop()
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SAME") == PARTITIONS


def test_slave_away_means_not_enough_replicas_for_acks_all_only(tmp_path):
    a = master(tmp_path, "a")
    b = slave(tmp_path, "b", a)
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        c = RawClient(a.url)
        assert c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=-1), [batch.encode_batch([b"x"])])[0].code == 0
        b.kill()
        wait_until(lambda: stats(a).get("slave_2_insync") == 0, 30, "the master to notice")
        rep = c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=-1), [batch.encode_batch([b"y"])])[0]
        assert rep.code == ErrorCode.NOT_ENOUGH_REPLICAS and "min_insync_replicas" in rep.message
        # a report in the slave's name while it is out of sync counts for nothing
        md = request(a.url, lambda i: m.Metadata(id=i, topics=["rep"]), 5000)
        forged = zmq_push(md.replication_acks[0])
        refused = stats(a)["replication_direct_acks_refused"]
        epoch = md.topics[0].partitions[0].leader_epoch  # the right epoch, the right slave id: still out of sync
        forged.send(rm.encoder.encode(rm.SlaveAck(slave_id=2, epoch=epoch, durable={"rep/0": 10**9})))
        forged.send(b"not msgpack at all")
        wait_until(lambda: stats(a)["replication_direct_acks_refused"] == refused + 2, 10, "the forged reports to be refused")
        forged.close(0)
        rep = c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=1), [batch.encode_batch([b"z"])])[0]
        assert rep.code == 0
        b = slave(tmp_path, "b", a, port=b.port)
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to come back in sync")
        rep = c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=-1), [batch.encode_batch([b"w"])])[0]
        assert rep.code == 0
        c.close()
        wait_until(lambda: caught_up(a, b), 30, "catch-up")
        s = RawClient(b.url)
        assert [r.value for r in s.fetch_all("rep", 0)] == [b"x", b"z", b"w"]
        s.close()
    finally:
        b.stop(), a.stop()


def test_a_slave_whose_disk_fills_fails_acks_all_clearly_and_keeps_what_it_acknowledged(tmp_path, tmpfs):
    a = master(tmp_path, "a")
    disk = tmpfs("3m")
    b = slave(tmp_path, "b", a, extra="[log]\nsegment_bytes = 1048576", data_root=disk)
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        acked: dict = {}
        for i in range(60):  # 3 MiB fill in a few seconds of these small batches
            acked.update(produce_stream(a.url, f"r{i}", 0.5, acks=-1))
            if "no space left on device" in stats(b)["replication_stopped_partitions"]:
                break
        else:
            raise AssertionError("the slave's 3 MiB file system never filled")
        assert acked, "nothing was acknowledged before the slave's disk filled"
        wait_until(lambda: stats(a).get("slave_2_insync") == 0, 30, "the master to take the slave out of sync")
        c = RawClient(a.url)
        rep = c.call(m.Produce(id=c.next_id(), topic="rep", partition=0, acks=-1), [batch.encode_batch([b"no"])])[0]
        assert rep.code == ErrorCode.NOT_ENOUGH_REPLICAS and "min_insync_replicas" in rep.message
        c.close()
        assert produce_stream(a.url, "one", 0.3, acks=1), "acks=1 must go on without the slave"
        # every acks=all acknowledgement meant both had it: the slave still serves all of them
        assert_present(a, acked)
        assert_present(b, acked)
        # room again, and a restart: the slave recovers, catches up and is back in sync
        b.stop()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        b = slave(tmp_path, "b", a, port=b.port, extra="[log]\nsegment_bytes = 1048576", data_root=disk)
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 60, "the slave back in sync")
        acked.update(produce_stream(a.url, "after", 0.3, acks=-1))
        wait_until(lambda: caught_up(a, b), 60, "catch-up")
        assert_present(b, acked)
    finally:
        b.stop(), a.stop()
    r = compare(tmp_path / "a", disk / "b")
    assert r.returncode == 0, r.stdout + r.stderr


def test_each_master_writer_streams_its_partitions_to_the_slave(tmp_path):
    """Writers publish committed batches themselves, one PUB socket each; the
    slave follows all of them live, without falling back to catch-up reads."""
    with contextlib.ExitStack() as running:  # stops whatever started, even if a start fails
        a = master(tmp_path, "a", writers=2)
        running.callback(a.stop)
        b = slave(tmp_path, "b", a, writers=3)  # the slave's own writer count does not matter
        running.callback(b.stop)
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        md = request(a.url, lambda i: m.Metadata(id=i, topics=[]), 5000)
        fetch, ack, *pubs = md.replication
        assert len(pubs) == 2 and len(set(md.replication)) == 4 and all(e.startswith("tcp://") for e in pubs)
        assert stats(a)["replication_endpoints"].split() == md.replication
        assert len(md.replication_acks) == 1 and md.replication_acks[0].startswith("tcp://127.0.0.1:")
        acked = produce_stream(a.url, "live", 1.0, acks=-1)
        assert {p for p, _ in acked} == set(range(PARTITIONS)), "acks=all must succeed on both writers' partitions"
        wait_until(lambda: caught_up(a, b), 30, "the slave to hold everything")
        st = stats(b)
        assert st["replication_gaps"] == 0 and st["replication_catch_up_reads"] == 0, st
        st = stats(a)
        assert st["replication_published_messages"] > 0
        # the slave's three writers reported their flushes to the acceptor directly
        assert st["replication_direct_acks"] > 0 and st["replication_direct_acks_refused"] == 0, st
        assert_present(b, acked)
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_slave_binds_no_replication_port_until_promoted(tmp_path):
    """Master and slave on one host with the same fixed pub_port: the slave
    binds nothing it does not serve, so both start; promoted while the old
    master still holds the port (which takes --force: that master still
    answers), its writer publishes on another one, which its metadata names,
    and a new slave follows it there."""
    port = free_port()
    with contextlib.ExitStack() as running:  # stops whatever started, even if a start fails
        a = master(tmp_path, "a", extra=f"pub_port = {port}")
        running.callback(a.stop)
        b = slave(tmp_path, "b", a, extra=f"pub_port = {port}")
        running.callback(b.stop)
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        md = request(a.url, lambda i: m.Metadata(id=i, topics=[]), 5000)
        assert md.replication[2:] == [f"tcp://127.0.0.1:{port}"]
        assert request(b.url, lambda i: m.Metadata(id=i, topics=[]), 5000).replication == []
        writer = psutil.Process(b.child_pid("writer0"))
        assert not [s for s in writer.net_connections(kind="tcp") if s.status == psutil.CONN_LISTEN]
        before = produce_stream(a.url, "before", 0.3, acks=-1)
        wait_until(lambda: caught_up(a, b), 30, "the slave to hold everything")
        # the master still answers: promoting would make two masters, refused unless forced
        r = subprocess.run([sys.executable, "-m", "hpbroker", "promote", "--broker", b.url],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "still answers as master" in r.stderr and "--force" in r.stderr, r.stderr
        assert stats(b)["replication_role"] == "slave" and "epoch" not in r.stdout
        promote(b, "--force")
        md = request(b.url, lambda i: m.Metadata(id=i, topics=[]), 5000)
        fetch, ack, *pubs = md.replication
        assert len(pubs) == 1 and pubs[0].startswith("tcp://127.0.0.1:") and pubs[0] != f"tcp://127.0.0.1:{port}"
        c = slave(tmp_path, "c", b, broker_id=3)
        running.callback(c.stop)
        wait_until(lambda: stats(b).get("slave_3_insync") == 1, 30, "a new slave of the promoted broker")
        after = produce_stream(b.url, "after", 0.3, acks=-1)
        assert after, "acks=all on the promoted broker with its new slave in sync"
        assert stats(b)["replication_direct_acks"] > 0  # its acceptor was bound before the promotion
        wait_until(lambda: caught_up(b, c), 30, "the new slave to hold everything")
        assert_present(c, {**before, **after})


def test_async_lag_gap_and_restart_catch_up(tmp_path):
    a = master(tmp_path, "a", mode="async", extra="pub_hwm = 2")
    b = slave(tmp_path, "b", a, mode="async")
    try:
        wait_until(lambda: stats(a).get("replication_slaves") == 1, 30, "the slave to join")
        # an async master releases no acks=all on a slave's word: it asks for no direct reports
        assert request(a.url, lambda i: m.Metadata(id=i, topics=[]), 5000).replication_acks == []
        before = produce_stream(a.url, "warm", 0.5, acks=-1)  # async: acks=all = local durability
        wait_until(lambda: caught_up(a, b), 30, "catch-up")
        rep_proc = psutil.Process(b.child_pid("replicator"))
        rep_proc.suspend()  # the slave stops reading: PUB drops past its high-water mark
        try:
            during = produce_stream(a.url, "gap", 1.0, acks=-1)
            assert during, "async acks must not wait for the slave"
            wait_until(lambda: stats(a).get("slave_2_lag_messages", 0) > 0, 10, "lag to show")
            st = stats(a)
            assert st["slave_2_lag_bytes"] > 0 and st["slave_2_lag_seconds"] > 0
        finally:
            rep_proc.resume()
        wait_until(lambda: caught_up(a, b), 60, "catch-up after the gap")
        assert stats(b)["replication_gaps"] > 0, "the slave should have detected the PUB gap"
        wait_until(lambda: stats(a).get("slave_2_lag_messages") == 0, 10, "lag to clear")
        # a slave restart: it resumes from its own log end
        b.kill()
        after = produce_stream(a.url, "down", 0.5, acks=1)
        b = slave(tmp_path, "b", a, port=b.port, mode="async")
        wait_until(lambda: caught_up(a, b), 60, "catch-up after the restart")
        assert_present(b, {**before, **during, **after})
    finally:
        b.stop(), a.stop()
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_throttled_slave_catches_up_no_faster_than_its_byte_rate(tmp_path):
    a = master(tmp_path, "a", mode="async")
    b = None
    try:
        history = produce_stream(a.url, "old", 1.0, acks=1)
        on_disk = sum(f.stat().st_size for f in (tmp_path / "a").rglob("*.log"))
        read_size = 64 << 10
        rate = max(4096, on_disk // 4)  # about four seconds of catch-up, whatever this machine produced
        t0 = time.monotonic()
        b = slave(tmp_path, "b", a, mode="async", extra=f"catchup_bytes = {read_size}\ncatchup_rate_bytes = {rate}")
        wait_until(lambda: caught_up(a, b), 120, "the throttled catch-up")
        took = time.monotonic() - t0
        # the replicator's figures reach the stats every 0.5 s: wait for the final ones
        wait_until(lambda: stats(b).get("replication_lag_messages") == 0, 10, "the slave's own lag figure")
        st = stats(b)
        read = st["replication_catch_up_bytes"]
        assert read >= 4 * read_size, f"too little history ({read} bytes) for the rate to matter"
        assert st["replication_catch_up_throttled_s"] > 0
        # a burst of read_size, then rate bytes a second, and the last read may overdraw by one read
        assert took >= (read - 2 * read_size) / rate, f"{read} bytes caught up in {took:.2f} s at {rate} B/s"
        assert_present(b, history)
    finally:
        if b is not None:
            b.stop()
        a.stop()
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr


def replicate_some(a: BrokerProcess, b: BrokerProcess, tag: str) -> dict[tuple[int, str], int]:
    """Half a second of acks=all produces to master ``a`` once slave ``b`` (broker
    id 2) is in sync, then wait until ``b`` has them all; -> the acknowledged."""
    wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
    acked = produce_stream(a.url, tag, 0.5, acks=-1)
    wait_until(lambda: caught_up(a, b), 30, "catch-up")
    return acked


def assert_cut_back(leader: BrokerProcess, follower: BrokerProcess, kept: dict, gone_tag: str) -> None:
    """``follower`` cut its divergent tail and caught up with ``leader``: it
    holds every batch of ``kept`` and none whose value starts with ``gone_tag``."""
    wait_until(lambda: caught_up(leader, follower), 60, "the follower to catch up")
    assert "truncating" in follower.log()
    assert_present(follower, kept)
    c = RawClient(follower.url)
    values = {r.value.decode() for p in range(PARTITIONS) for r in c.fetch_all("rep", p)}
    c.close()
    assert not any(v.startswith(gone_tag) for v in values)


@pytest.mark.parametrize("second_reign", [False, True], ids=["same-reign", "followed-reign-without-batches"])
def test_divergent_tail_is_truncated_by_epoch(tmp_path, second_reign):
    """a's unreplicated acks=1 tail is cut when it rejoins the promoted b.
    second_reign: a restarted once more and b followed that reign but was
    gone before any batch of it came, so a's tail is of an epoch b holds
    nothing of; b's reigns name it, so the cut is clean, no
    replication.unclean_truncation needed (refused if the reign were not
    recorded)."""
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    try:
        shared = replicate_some(a, b, "shared")
        if second_reign:
            a.stop()
            a = master(tmp_path, "a", port=a.port, broker_id=1)
            ea = epoch_of(a)
            wait_until(lambda: stats(b).get("replication_master_epoch") == ea, 60, "b to follow a's new reign")
        b.kill()
        lost = produce_stream(a.url, "only-on-a", 0.5, acks=1)  # never replicated
        assert lost
        a.kill()
        b = slave(tmp_path, "b", f"tcp://127.0.0.1:{free_port()}", port=b.port, broker_id=2)
        promote(b)
        newer = produce_stream(b.url, "only-on-b", 0.5, acks=1)
        a = slave(tmp_path, "a", b, port=a.port, broker_id=1)
        assert_cut_back(b, a, {**shared, **newer}, "only-on-a")
        assert "unclean" not in a.log()
    finally:
        a.stop(), b.stop()
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr


def epoch_of(b: BrokerProcess) -> int:
    return stats(b)["leader_epoch"]


def test_two_masters_at_once_never_share_an_epoch_and_the_loser_cuts_back_only_when_told(tmp_path):
    """The old master, restarted with its old flags after its (lagging) slave
    was promoted, is master too: a split brain only a coordinator prevents.
    Each took "the next" epoch; with owned epochs those differ.  The promoted
    one, then made a slave of the other, holds batches of a reign the other
    never led nor followed, acknowledged there: it refuses to cut them and
    says so.  Told to (replication.unclean_truncation), it cuts back to where
    its history parted from the other's - which is where its own epoch 1
    ends, below the other's end of epoch 1 (KIP-279): cutting at the other's
    end only would keep its own batches in the middle of the log."""
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    try:
        shared = replicate_some(a, b, "shared")
        b.kill()
        lagged = produce_stream(a.url, "lagged-on-a", 1.0, acks=1)  # epoch 1, never reaches b
        a.kill()
        b = slave(tmp_path, "b", f"tcp://127.0.0.1:{free_port()}", port=b.port, broker_id=2)
        eb = promote(b)
        on_b = produce_stream(b.url, "only-on-b", 0.3, acks=1)  # acknowledged by b, within a's epoch-1 offsets
        a = master(tmp_path, "a", port=a.port, broker_id=1)  # restarted as it was: a second master
        ea = epoch_of(a)
        assert ea != eb and ea % 1024 == 1 and eb % 1024 == 2, (ea, eb)
        on_a = produce_stream(a.url, "only-on-a", 0.3, acks=1)
        assert lagged and on_b and on_a
        for p in range(PARTITIONS):  # b's reign lies within a's epoch-1 offsets on every partition
            assert max(o for (q, _), o in on_b.items() if q == p) < max(o for (q, _), o in lagged.items() if q == p)
        b.stop()
        b = slave(tmp_path, "b", a, port=b.port, broker_id=2)
        wait_until(lambda: stats(b).get("replication_state") == "refused", 30, "the slave to refuse")
        detail = stats(b)["replication_detail"]
        assert "unclean_truncation" in detail and f"epoch {eb}" in detail, detail
        assert "truncating" not in b.log()
        assert_present(b, {**shared, **on_b})  # nothing it acknowledged was cut
        state = json.loads((tmp_path / "b" / "broker-state.json").read_text())
        assert state["epoch"] >= ea and ea not in state["reigns"]  # seen (a promotion moves past it), never followed
        b.stop()
        b = slave(tmp_path, "b", a, port=b.port, broker_id=2, extra="unclean_truncation = true")  # keep a's history
        assert_cut_back(a, b, {**shared, **lagged, **on_a}, "only-on-b")
    finally:
        a.stop(), b.stop()
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SAME") == PARTITIONS


def test_a_promoted_slave_restarted_with_its_old_flags_stays_master_until_its_old_master_is_back(tmp_path):
    """A crash (or a service manager) restarts a promoted broker with the
    slave flags it had: while its old master is gone it is master again, in
    a new epoch, and takes produce requests.  Once the old master answers as
    a master, the same flags make it that master's slave rather than a second
    master, and it then refuses to cut its own reign (the two-masters case)."""
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    try:
        shared = replicate_some(a, b, "shared")
        a.kill()
        eb = promote(b)
        on_b = produce_stream(b.url, "promoted", 0.3, acks=1)
        b.kill()
        b = slave(tmp_path, "b", a, port=b.port, broker_id=2)  # the flags it had before the promotion
        st = stats(b)
        assert st["replication_role"] == "master" and st["leader_epoch"] > eb and st["leader_epoch"] % 1024 == 2, st
        assert st["promoted_from"] == a.url  # why a broker started as a slave is master
        assert "starting as master" in b.log()
        md = request(b.url, lambda i: m.Metadata(id=i, topics=["rep"]), 5000)
        assert md.role == "master" and md.topics[0].partitions[0].leader == 2
        after = produce_stream(b.url, "restarted", 0.3, acks=1)
        assert on_b and after
        assert_present(b, {**shared, **on_b, **after})
        state = json.loads((tmp_path / "b" / "broker-state.json").read_text())
        assert state["promoted_from"] == a.url and st["leader_epoch"] in state["reigns"]
        # the old master comes back with its old flags: the same slave flags now follow it
        a = master(tmp_path, "a", port=a.port, broker_id=1)
        b.stop()
        b = slave(tmp_path, "b", a, port=b.port, broker_id=2)
        st = stats(b)
        assert st["replication_role"] == "slave" and "promoted_from" not in st
        assert "answers as a master again" in b.log()
        wait_until(lambda: stats(b).get("replication_state") == "refused", 30, "the slave to refuse")
        assert_present(b, {**shared, **on_b, **after})  # nothing it acknowledged was cut
        assert "promoted_from" not in json.loads((tmp_path / "b" / "broker-state.json").read_text())
    finally:
        a.stop(), b.stop()


def cut_log_tail(data_dir, partition: int, offset: int) -> None:
    """Cut a partition's (single) segment back to ``offset`` (a batch's base
    offset), as a power cut loses what the disk had not made durable."""
    d = data_dir / f"rep-{partition}"
    (seg,) = sorted(d.glob("*.log"))
    (pos,) = [pos for pos, h in batch.iter_batches(seg.read_bytes()) if h.base_offset == offset]
    with open(seg, "r+b") as f:
        f.truncate(pos)


def test_a_slave_ahead_of_its_restarted_master_cuts_back_by_epoch(tmp_path):
    """A master streams each group-commit round to the slave as it starts
    writing it, so a slave can hold batches its master then loses: a power cut
    before the master's fdatasync (none of them acknowledged).  Simulated by
    cutting the master's log while it is down (into batches it acknowledged, so
    the test knows which values must vanish).  It restarts with a new epoch;
    the slave cuts what the master no longer has, then follows again."""
    a = master(tmp_path, "a", broker_id=1)
    b = slave(tmp_path, "b", a, broker_id=2)
    try:
        first = replicate_some(a, b, "first")
        a.kill()
        end = sorted(off for (p, _), off in first.items() if p == 0)[-3]
        cut_log_tail(tmp_path / "a", 0, end)  # the last three acknowledged batches and any after them
        a = master(tmp_path, "a", port=a.port, broker_id=1)
        wait_until(lambda: "truncating" in b.log(), 60, "the slave to cut its tail")
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 60, "the slave to be in sync again")
        later = produce_stream(a.url, "later", 0.5, acks=-1)
        assert later
        wait_until(lambda: caught_up(a, b), 60, "catch-up after the master's restart")
        kept = {k: off for k, off in first.items() if k[0] != 0 or off < end}
        assert len(first) - len(kept) == 3
        assert_present(b, {**kept, **later})
        c = RawClient(b.url)
        recs = c.fetch_all("rep", 0)
        c.close()
        lost = {first_value for (p, first_value), off in first.items() if p == 0 and off >= end}
        assert lost and not lost & {r.value.decode() for r in recs}
    finally:
        a.stop(), b.stop()
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_slave_refuses_a_strangers_stream(tmp_path):
    a = master(tmp_path, "a")
    b = slave(tmp_path, "b", a, cluster="someone-else")
    try:
        c = RawClient(a.url)
        assert c.produce("rep", 0, [batch.encode_batch([b"private"])]).code == 0
        md = c.call(m.Metadata(id=c.next_id(), topics=[]))[0]
        c.close()
        wait_until(lambda: stats(b).get("replication_state") == "refused", 30, "the refusal")
        assert "cluster" in stats(b)["replication_detail"]
        assert stats(a).get("replication_slaves") == 0
        # the master refuses a stranger's handshake too
        import zmq

        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(md.replication[0])  # fetch
        s.send(rm.encoder.encode(rm.Hello(cluster_id="intruder", slave_id=9, max_epoch=0)))
        assert s.poll(5000)
        reply = rm.from_master.decode(s.recv())
        s.close()
        assert isinstance(reply, rm.Refused) and "cluster id" in reply.reason
        sc = RawClient(b.url)
        rep, data = sc.fetch("rep", 0, 0)
        assert rep.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION or data == b""
        sc.close()
    finally:
        b.stop(), a.stop()


def test_a_slave_refuses_a_master_of_another_replication_version(tmp_path):
    """A master of the release before the writers published answers Metadata
    with the old endpoint layout and no version: the slave says so plainly
    instead of connecting its sockets to the wrong endpoints."""
    import threading

    import zmq

    ctx = zmq.Context.instance()
    old_master = ctx.socket(zmq.ROUTER)
    old_master.setsockopt(zmq.LINGER, 0)
    port = old_master.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer():  # the older release's metadata: [pub, fetch, ack], no replication_version
        while not stop.is_set():
            if old_master.poll(100):
                ident, *frames = old_master.recv_multipart()
                req, _ = codec.decode_request(frames)
                old = m.MetadataReply(id=req.id, cluster_id="hpbroker", broker_id=1, role="master",
                                      replication=[f"tcp://127.0.0.1:{free_port()}" for _ in range(3)])
                old_master.send_multipart([ident, *codec.encode_reply(old)])

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    b = None
    try:
        b = slave(tmp_path, "b", f"tcp://127.0.0.1:{port}")
        wait_until(lambda: stats(b).get("replication_state") == "refused", 30, "the refusal")
        assert "replication version 0" in stats(b)["replication_detail"]
    finally:
        if b is not None:
            b.stop()
        stop.set()
        t.join(5)
        old_master.close(0)


class ScriptedMaster:
    """Just enough of a master, on real sockets, to put a batch on the PUB
    stream at a moment a test chooses: metadata, Welcome at ``epoch`` to
    every Hello, EpochEnd answered from what it published, a drained ack
    socket.  ``handshakes`` counts Metadata requests (a slave sends one at
    every (re)connect)."""

    def __init__(self, epoch: int):
        import threading

        import zmq

        self.ctx = zmq.Context.instance()
        self.epoch = epoch
        self.handshakes = 0
        self.ends: dict[tuple[int, int], int] = {}  # (partition, epoch) -> end offset of what was published
        self.boot, self.fetch, self.ack = (self.ctx.socket(k) for k in (zmq.ROUTER, zmq.ROUTER, zmq.PULL))
        self.pub = self.ctx.socket(zmq.PUB)
        ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in (self.boot, self.fetch, self.ack, self.pub)]
        self.url = f"tcp://127.0.0.1:{ports[0]}"
        self.endpoints = [f"tcp://127.0.0.1:{p}" for p in ports[1:]]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import zmq

        poller = zmq.Poller()
        for s in (self.boot, self.fetch, self.ack):
            poller.register(s, zmq.POLLIN)
        while not self.stop.is_set():
            for s, _ in poller.poll(100):
                if s is self.ack:
                    s.recv()
                elif s is self.boot:
                    ident, *frames = s.recv_multipart()
                    req, _ = codec.decode_request(frames)
                    self.handshakes += 1
                    s.send_multipart([ident, *codec.encode_reply(m.MetadataReply(
                        id=req.id, cluster_id="hpbroker", broker_id=1, role="master", replication=self.endpoints,
                        replication_version=rm.VERSION, leader_epoch=self.epoch))])
                else:
                    ident, raw = s.recv_multipart()
                    msg = rm.to_master.decode(raw)
                    if isinstance(msg, rm.Hello):
                        s.send_multipart([ident, rm.encoder.encode(rm.Welcome(
                            cluster_id="hpbroker", master_id=1, epoch=self.epoch, topics={"rep": PARTITIONS}, hwm={}))])
                    elif isinstance(msg, rm.EpochEnd):  # a slave handshaking again, with data
                        s.send_multipart([ident, rm.encoder.encode(rm.EpochEndReply(
                            answers=[self._epoch_end(t, p, e) for t, p, e in msg.asks]))])

    def _epoch_end(self, topic: str, partition: int, epoch: int):
        """The newest epoch up to ``epoch`` this master published on the
        partition, and where its batches end (-1, -1: none)."""
        ends = dict(self.ends)
        found = max((e for p, e in ends if p == partition and e <= epoch), default=-1)
        return topic, partition, found, ends.get((partition, found), -1), ""

    def publish(self, base: int, epoch: int, values: list[bytes], rot: bool = False, partition: int = 0) -> None:
        """One batch of ``values`` for rep/``partition``, stamped ``base`` and
        ``epoch`` (``rot``: with one byte flipped after its CRC was computed)."""
        import msgspec

        b = bytearray(batch.encode_batch(values))
        batch.stamp(b, base, epoch)
        if rot:
            b[-3] ^= 0xFF
        end = base + len(values)
        self.ends[(partition, epoch)] = max(self.ends.get((partition, epoch), 0), end)
        self.pub.send_multipart([b"B", msgspec.msgpack.encode(("rep", partition, end)), bytes(b)])

    def mark(self, b: BrokerProcess, what: str) -> None:
        """Show that the slave ``b`` has handled everything published so far.
        A marker batch goes to rep/1 (until the slave's SUB has joined) and
        is waited for there: the PUB stream is ordered, and with one writer
        the slave appends both partitions in ring order and reports their
        watermarks together, so anything it took from rep/0 before the
        marker is visible by the time the marker is."""
        def seen() -> bool:
            self.publish(0, self.epoch, [b"marker:%d" % i for i in range(10)], partition=1)
            return latest(b, 1) == 10

        wait_until(seen, 60, f"the marker behind {what}", lambda: f"rep/0 at {latest(b)}, rep/1 at {latest(b, 1)}, "
                   f"{ {k: v for k, v in stats(b).items() if k.startswith('replication_')} }")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in (self.boot, self.fetch, self.ack, self.pub):
            s.close(0)


def latest(b: BrokerProcess, partition: int = 0) -> int:
    c = RawClient(b.url)
    try:
        r = c.call(m.ListOffsets(id=c.next_id(), topic="rep", partition=partition, spec=m.LATEST))[0]
        return r.offset if r.code == 0 else -1
    finally:
        c.close()


def test_a_batch_of_a_newer_reign_is_never_appended_before_a_handshake(tmp_path):
    """A master restarted on fixed ports takes its slave's sockets back by
    itself, and the first batches of its new reign can reach the slave before
    the keep-alive that tells it the epoch changed.  Appended then, such a
    batch would sit right after a tail the new master no longer has (the
    slave's latest epoch would be the new one, so truncation by epoch would
    never cut that tail): the replicas would differ in the middle.  The slave
    must drop it and handshake again first."""
    fake = ScriptedMaster(epoch=1)
    b = None
    try:
        b = slave(tmp_path, "b", fake.url)
        wait_until(lambda: stats(b).get("replication_state") == "streaming", 30, "the handshake")
        first = fake.handshakes

        def appended() -> bool:  # PUB drops to a subscriber still joining: send until it is in
            fake.publish(0, 1, [b"reign-1:%d" % i for i in range(10)])
            return latest(b) == 10

        wait_until(appended, 30, "the first reign's batch on the slave")
        fake.publish(10, 1025, [b"reign-1025:%d" % i for i in range(10)])  # where the log ends, a newer epoch
        wait_until(lambda: fake.handshakes > first or latest(b) > 10, 30, "the slave to handle the newer batch")
        fake.mark(b, "the newer batch")  # through the handshake again: the writer took whatever was forwarded
        assert latest(b) == 10, "a batch of a newer reign was appended before any handshake with that reign"
        assert fake.handshakes > first
        assert "newer than the handshake's" in b.log()
    finally:
        if b is not None:
            b.stop()
        fake.close()


def test_a_corrupt_batch_on_the_stream_is_never_appended(tmp_path):
    """A batch that fails its CRC on the PUB stream (damaged on the way, or
    in the master's memory) stops that partition where it is: nothing of it
    or after it is appended.  (The next test covers one rotten on the
    master's disk, met by a catch-up read.)"""
    fake = ScriptedMaster(epoch=1)
    b = None
    try:
        b = slave(tmp_path, "b", fake.url)
        wait_until(lambda: stats(b).get("replication_state") == "streaming", 30, "the handshake")

        def appended() -> bool:  # PUB drops to a subscriber still joining: send until it is in
            fake.publish(0, 1, [b"sound:%d" % i for i in range(10)])
            return latest(b) == 10

        wait_until(appended, 30, "the sound batch on the slave")
        fake.publish(10, 1, [b"rotten:%d" % i for i in range(10)], rot=True)
        wait_until(lambda: "rep/0" in stats(b).get("replication_stopped_partitions", ""), 30, "rep/0 to stop")
        assert "corrupt batch from the master at offset 10" in stats(b)["replication_stopped_partitions"]
        fake.publish(20, 1, [b"after:%d" % i for i in range(10)])
        fake.mark(b, "the batch after the rotten one")
        assert latest(b) == 10
    finally:
        if b is not None:
            b.stop()
        fake.close()
    assert_log_verifies(tmp_path / "b")


def test_a_corrupt_batch_on_the_master_is_never_copied(tmp_path):
    a = master(tmp_path, "a", mode="async")
    b = None
    try:
        c = RawClient(a.url)
        batches = [batch.encode_batch([b"%d-%d" % (i, j) for j in range(50)]) for i in range(3)]
        for x in batches:
            assert c.produce("rep", 0, [x]).code == 0
        # the middle batch rots on the master's disk after it was acknowledged
        seg = tmp_path / "a" / "rep-0" / f"{0:020d}.log"
        with open(seg, "r+b") as f:
            f.seek(len(batches[0]) + 200)
            byte = f.read(1)
            f.seek(len(batches[0]) + 200)
            f.write(bytes([byte[0] ^ 0xFF]))
        b = slave(tmp_path, "b", a, mode="async")
        wait_until(lambda: "rep/0" in stats(b).get("replication_stopped_partitions", ""), 30, "the slave to stop rep/0")
        assert c.produce("rep", 1, [batch.encode_batch([b"fine"])]).code == 0
        wait_until(lambda: RawClient(b.url).fetch("rep", 1, 0)[0].high_watermark == 1, 30, "rep/1 to replicate")
        s = RawClient(b.url)
        assert [r.offset for r in s.fetch_all("rep", 0)] == list(range(50))  # up to the corrupt batch, not past it
        s.close()
        c.close()
    finally:
        if b is not None:
            b.stop()
        a.stop()
    assert_log_verifies(tmp_path / "b")
