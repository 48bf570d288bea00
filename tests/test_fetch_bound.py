"""How far consumers of a master may read (replication.fetch_bound).

The rules, without sockets, on FetchService; then on a real master and
slave: with the slave's writer stopped, what the master acknowledged with
acks=1 stays out of consumers' sight until the slave holds it, a long poll
is answered the moment it does, and once the slave falls out of sync the
master serves its own durable data again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from hpbroker import batch
from hpbroker.net.fetch import FetchService
from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from rawclient import RawClient
from test_replication import master, slave, stats, wait_until

K = "t/0"


def service(tmp_path, hwm: int) -> FetchService:
    f = FetchService(tmp_path, 1 << 20)
    f.update({K: hwm}, {K: 0})
    return f


def fetch_at(offset: int) -> m.Fetch:
    return m.Fetch(id=offset, topic="t", partition=0, offset=offset, max_wait_ms=1000)


def test_the_visible_end_follows_the_bound_and_never_moves_back(tmp_path):
    f = service(tmp_path, 10)
    assert f.visible(K) == 10  # no bound: the high watermark
    f2 = service(tmp_path, 10)
    f2.bound = {K: 4}
    assert f2.visible(K) == 4
    f2.bound[K] = 7
    assert f2.visible(K) == 7
    f2.bound[K] = 12
    assert f2.visible(K) == 10  # never past the high watermark
    f2.bound = None  # no slave in sync: the master's own durable offset
    f2.update({K: 15}, {})
    assert f2.visible(K) == 15
    f2.bound = {K: 11}  # a slave back in sync that holds less: what was shown stays shown
    assert f2.visible(K) == 15
    f2.update({K: 20}, {})
    assert f2.visible(K) == 15
    f2.bound[K] = 18
    assert f2.visible(K) == 18
    f2.update({K: 3}, {})  # the log itself shrank (truncated): the visible end follows it
    assert f2.visible(K) == 3


def test_reads_between_the_visible_end_and_the_high_watermark_find_nothing_and_no_error(tmp_path):
    f = service(tmp_path, 10)
    f.bound = {K: 4}
    assert f.read("t", 0, 4, 1000) == (b"", 4, 0)
    assert f.read("t", 0, 9, 1000) == (b"", 4, 0)
    assert f.nothing_yet(K, 4) and f.nothing_yet(K, 10)
    assert not f.nothing_yet(K, 3) and not f.nothing_yet(K, 11)


def test_a_parked_fetch_wakes_when_the_bound_moves_past_it_not_before(tmp_path):
    f = service(tmp_path, 10)
    f.bound = {K: 4}
    f.park(b"c", fetch_at(4), time.monotonic() + 10)
    f.park(b"d", fetch_at(6), time.monotonic() + 10)
    f.update({K: 12}, {})
    assert f.woken([K]) == []  # the high watermark moved, the visible end did not
    assert f.held_back() == 8
    f.bound[K] = 5
    assert [p.ident for p in f.woken(f.parked_keys())] == [b"c"]
    assert f.parked_keys() == [K]
    f.bound = None
    assert [p.ident for p in f.woken(f.parked_keys())] == [b"d"]
    assert f.parked_keys() == []


def send_fetch(c: RawClient, partition: int, offset: int, wait_ms: int) -> int:
    req = m.Fetch(id=c.next_id(), topic="rep", partition=partition, offset=offset, max_bytes=1 << 20, max_wait_ms=wait_ms)
    c.send_frames(codec.encode_request(req))
    return req.id


def ask_latest(c: RawClient, also: int | None = None):
    """ListOffsets(LATEST) of rep/0 on ``c``: its reply, or the reply to
    request ``also`` when that one comes first (the question then waits
    for the caller's next recv)."""
    req = m.ListOffsets(id=c.next_id(), topic="rep", partition=0, spec=m.LATEST)
    c.send_frames(codec.encode_request(req))
    rep, frames = c.recv()
    assert rep.id in (req.id, also), (rep, req)
    return rep, frames


def latest(c: RawClient, partition: int) -> int:
    rep = c.call(m.ListOffsets(id=c.next_id(), topic="rep", partition=partition, spec=m.LATEST))[0]
    assert rep.code == 0, rep
    return rep.offset


class Paused:
    """The slave's writer, stopped and continued with signals (continued at the end in any case)."""

    def __init__(self, pid: int):
        self.pid, self.stopped = pid, False

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        if self.stopped:
            os.kill(self.pid, signal.SIGCONT)
            self.stopped = False


@contextlib.contextmanager
def pair(tmp_path, extra: str = ""):
    """A sync master and its slave, in sync; yields (master, the slave's writer, a client of the master)."""
    a = master(tmp_path, "a", extra=extra, lag_ms=4000)
    b = slave(tmp_path, "b", a)
    writer = Paused(b.child_pid("writer0"))
    c = None
    try:
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to be in sync")
        c = RawClient(a.url, timeout_ms=10_000)
        yield a, writer, c
    finally:
        writer.cont()
        if c is not None:
            c.close()
        b.stop(), a.stop()


def test_a_sync_master_shows_consumers_only_what_the_slave_holds(tmp_path):
    with pair(tmp_path) as (a, writer, c):
        assert c.produce("rep", 0, [batch.encode_batch([b"both"])], acks=-1).code == 0
        assert [r.value for r in c.fetch_all("rep", 0)] == [b"both"]

        writer.stop()  # the slave can no longer make anything durable
        rep = c.produce("rep", 0, [batch.encode_batch([b"master only"])], acks=1)
        assert rep.code == 0 and rep.base_offsets == [1]
        # acknowledged and durable on the master, but a failover now would lose it:
        # consumers do not see it, and "latest" stops before it
        assert [r.value for r in c.fetch_all("rep", 0)] == [b"both"]
        assert latest(c, 0) == 1
        st = stats(a)
        assert st["messages"] == 2 and st["messages_awaiting_replication"] == 1 and st["fetch_bound"] == "replicated"
        poll = send_fetch(c, 0, 1, 60_000)
        # The acceptor answers one connection's requests in order, so a reply
        # to a later request that comes first shows the long poll still parked.
        rep, _ = ask_latest(c)
        assert rep.offset == 1, f"the long poll was answered before it parked: {rep}"
        writer.cont()  # the slave writes it: the long poll is answered with it,
        deadline = time.monotonic() + 60  # before any later request sees the visible end move
        while True:
            rep, frames = ask_latest(c, also=poll)
            if rep.id == poll:
                break
            assert rep.offset == 1, f"consumers may read up to {rep.offset} and the long poll still waits"
            assert time.monotonic() < deadline, "the slave did not write the batch within 60 s"
            time.sleep(0.05)
        assert rep.code == 0 and rep.high_watermark == 2
        assert [r.value for r in batch.records_of(bytes(frames[0]), 0)] == [b"master only"]
        assert c.recv()[0].offset == 2  # the question asked behind it

        writer.stop()
        assert c.produce("rep", 0, [batch.encode_batch([b"alone"])], acks=1).code == 0
        assert latest(c, 0) == 2
        # the slave falls out of sync: the master alone is the in-sync set, and
        # its consumers read its own durable data again (acks=all fails meanwhile)
        wait_until(lambda: stats(a).get("slave_2_insync") == 0, 30, "the slave to fall out of sync")
        assert latest(c, 0) == 3
        assert stats(a)["fetch_bound"].startswith("durable") and stats(a)["messages_awaiting_replication"] == 0
        assert [r.value for r in c.fetch_all("rep", 0)] == [b"both", b"master only", b"alone"]
        writer.cont()
        wait_until(lambda: stats(a).get("slave_2_insync") == 1, 30, "the slave to come back in sync")
        assert latest(c, 0) == 3  # never back


def test_fetch_bound_durable_serves_the_masters_own_data_at_once(tmp_path):
    with pair(tmp_path, extra='fetch_bound = "durable"') as (a, writer, c):
        writer.stop()
        assert c.produce("rep", 0, [batch.encode_batch([b"now"])], acks=1).code == 0
        assert stats(a).get("slave_2_insync") == 1
        assert [r.value for r in c.fetch_all("rep", 0)] == [b"now"]
        assert latest(c, 0) == 1
