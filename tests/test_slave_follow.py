"""A slave's per-partition follow state (hpbroker/replication/follow.py), without sockets or rings.

The records that would go to the local writers are caught by a fake
``send``; catch-up reads are asked of a real CatchUp with no rate limit.
"""

from __future__ import annotations

from hpbroker import batch as B
from hpbroker.ipc import handoff
from hpbroker.ipc.completions import Completions
from hpbroker.protocol.errors import ErrorCode
from hpbroker.replication.catchup import CatchUp
from hpbroker.replication.follow import Follow
from hpbroker.replication.messages import CatchUpReply
from hpbroker.replication.pacing import ByteRate

EPOCH = 3


def stamped(base: int, count: int, epoch: int = EPOCH) -> bytes:
    """A batch of ``count`` records as the master's log holds it: at ``base``, of ``epoch``."""
    b = B.encode_batch([b"value-%d" % (base + i) for i in range(count)], timestamp_ms=1_700_000_000_000 + base)
    B.stamp(b, base, epoch)
    return bytes(b)


def corrupt(b: bytes) -> bytes:
    bad = bytearray(b)
    bad[-1] ^= 0xFF  # a value byte: the CRC no longer matches
    return bytes(bad)


class Sent(list):
    """The fake ``send``: every ring record, as (kind, token, key, batches, arg)."""

    def __call__(self, kind, token, topic, partition, frames, arg):
        self.append((kind, token, handoff.tp_key(topic, partition), [bytes(f) for f in frames], arg))

    def tokens(self, key: str) -> list[int]:
        return [token for _, token, k, _, _ in self if k == key]


def follower(expected: dict[str, int] | None = None) -> tuple[Follow, Sent]:
    sent = Sent()
    f = Follow(sent, CatchUp(ByteRate(0, 4096)))
    f.expected.update(expected or {})
    return f, sent


def answer(f: Follow, *done: tuple[int, int], hwm: dict[str, int] | None = None, writer: int = 0) -> None:
    """A writer's completion message: (token, code) pairs and high watermarks."""
    f.on_completions(Completions(v=1, writer=writer, done=[(t, code, "refused" if code else "", [], 0) for t, code in done],
                                 hwm=hwm or {}))


def views(*batches: bytes) -> list[memoryview]:
    return [memoryview(b) for b in batches]


# -- the stream's rule: forward --------------------------------------------------------------


def test_a_batch_at_the_expected_offset_goes_to_the_writer_byte_for_byte():
    f, sent = follower({"t/0": 10})
    a, b = stamped(10, 5), stamped(15, 2)
    assert f.forward("t", 0, views(a, b), EPOCH) is True
    assert [(kind, key, data, arg) for kind, _, key, data, arg in sent] == [(handoff.REPLICA, "t/0", [a, b], 0)]
    assert f.expected["t/0"] == 17
    assert f.inflight["t/0"] == 1 and f.received == 2
    assert f.gaps == 0 and f.catchup.pending == 0


def test_batches_the_log_already_holds_are_skipped():
    f, sent = follower({"t/0": 10})
    f.forward("t", 0, views(stamped(0, 5), stamped(5, 5), stamped(10, 3)), EPOCH)
    assert [data for _, _, _, data, _ in sent] == [[stamped(10, 3)]]
    f.forward("t", 0, views(stamped(10, 3)), EPOCH)  # a repeat: nothing to send
    assert len(sent) == 1 and f.expected["t/0"] == 13


def test_a_batch_past_the_expected_offset_is_a_gap_and_queues_a_catch_up():
    f, sent = follower({"t/0": 10})
    assert f.forward("t", 0, views(stamped(10, 5), stamped(20, 5), stamped(25, 5)), EPOCH) is True
    # what comes before the gap is appended; nothing after it
    assert [data for _, _, _, data, _ in sent] == [[stamped(10, 5)]]
    assert f.expected["t/0"] == 15 and f.gaps == 1
    assert f.catchup.next_read() == "t/0"
    # the read brings the rest: the stream's batches of this partition wait meanwhile
    assert f.streams("t", 0, hwm=40) is False
    assert f.streams("t", 1, hwm=40) is True


def test_a_batch_of_a_newer_epoch_appends_nothing_and_asks_for_a_new_handshake():
    f, sent = follower({"t/0": 10})
    assert f.forward("t", 0, views(stamped(10, 5), stamped(15, 5, epoch=EPOCH + 1)), EPOCH) is False
    assert sent == []  # not even the batch of the old epoch before it
    assert f.expected["t/0"] == 10 and f.received == 0
    assert f.catchup.pending == 0 and not f.stopped


def test_a_corrupt_batch_stops_that_partition_and_only_it():
    f, sent = follower({"t/0": 10, "t/1": 10})
    assert f.forward("t", 0, views(stamped(10, 5), corrupt(stamped(15, 5)), stamped(20, 5)), EPOCH) is True
    assert [data for _, _, _, data, _ in sent] == [[stamped(10, 5)]]  # up to the corrupt one, never past it
    assert f.stopped == {"t/0": "corrupt batch from the master at offset 15"}
    f.forward("t", 0, views(stamped(15, 5)), EPOCH)  # not followed any more, even with good bytes
    f.forward("t", 0, views(stamped(40, 5)), EPOCH)  # nor does a gap ask for a read
    assert len(sent) == 1 and f.catchup.pending == 0
    f.forward("t", 1, views(stamped(10, 5)), EPOCH)  # the other partition goes on
    assert sent[-1][2] == "t/1" and f.expected["t/1"] == 15


def test_a_torn_batch_stops_that_partition():
    f, sent = follower({"t/0": 10})
    f.forward("t", 0, views(stamped(10, 5)[: B.HEADER_SIZE - 1]), EPOCH)
    assert sent == [] and f.stopped == {"t/0": "a torn batch from the master after offset 10"}


def test_truncation_cuts_the_log_and_goes_on_from_the_cut():
    f, sent = follower({"t/0": 50})
    f.truncate("t", 0, 30)
    assert [(kind, key, data, arg) for kind, _, key, data, arg in sent] == [(handoff.TRUNCATE, "t/0", [], 30)]
    assert f.expected["t/0"] == 30 and f.appending()


# -- the local writers' answers ----------------------------------------------------------------


def test_the_writers_first_report_sets_where_each_partition_goes_on():
    f, _ = follower({"t/1": 7})
    answer(f, hwm={"t/0": 12, "t/1": 3})
    f.start_at_durable()
    assert f.expected == {"t/0": 12, "t/1": 7}  # what was already known stays


def test_a_refused_record_pauses_the_partition_until_nothing_is_in_flight_then_catches_up_from_durable():
    f, sent = follower({"t/0": 10})
    f.forward("t", 0, views(stamped(10, 5)), EPOCH)
    f.forward("t", 0, views(stamped(15, 5)), EPOCH)
    first, second = sent.tokens("t/0")
    answer(f, (first, ErrorCode.OFFSET_OUT_OF_RANGE))
    assert f.paused == {"t/0"} and f.catchup.pending == 0  # one record still in flight
    assert f.streams("t", 0, hwm=30) is False
    answer(f, (second, ErrorCode.OFFSET_OUT_OF_RANGE), hwm={"t/0": 12})
    assert f.paused == set()
    assert f.expected["t/0"] == 12  # where the local log ends
    assert f.catchup.next_read() == "t/0"


def test_a_fenced_local_partition_is_not_followed_any_more():
    f, sent = follower({"t/0": 10})
    f.forward("t", 0, views(stamped(10, 5)), EPOCH)
    answer(f, (sent.tokens("t/0")[0], ErrorCode.PARTITION_FENCED))
    assert "t/0" in f.stopped and not f.paused
    f.forward("t", 0, views(stamped(15, 5)), EPOCH)
    assert len(sent) == 1


def test_answers_for_records_of_others_are_ignored_and_durable_moves_mark_an_ack_due():
    f, _ = follower()
    f.durable_changed = False
    answer(f, (99, 0), hwm={"t/0": 5})
    assert f.durable == {"t/0": 5} and f.durable_changed
    f.durable_changed = False
    answer(f, hwm={"t/0": 5})  # no move
    assert not f.durable_changed


# -- the master's answers -------------------------------------------------------------------------


def test_the_handshake_queues_a_catch_up_for_every_partition_behind_the_master():
    f, _ = follower({"t/0": 10, "t/1": 20})
    f.paused.add("t/2")
    f.on_handshake({"t/0": 15, "t/1": 20, "t/2": 9})
    assert list(f.catchup.queue) == ["t/0"]
    assert f.lag() == 15 + 20 + 9  # nothing durable here yet


def test_a_catch_up_read_appends_and_reads_again_until_the_newest_watermark():
    f, sent = follower({"t/0": 10})
    f.catchup.want("t/0")
    assert f.catchup.next_read() == "t/0"
    f.streams("t", 0, hwm=30)  # the stream went on meanwhile
    data = stamped(10, 5) + stamped(15, 5)
    assert f.on_catch_up(CatchUpReply(topic="t", partition=0, offset=10, hwm=20), data, EPOCH) is True
    assert [d for _, _, _, d, _ in sent] == [[stamped(10, 5), stamped(15, 5)]]
    assert f.catchup.bytes == len(data)
    assert f.catchup.next_read() == "t/0"  # 20 < 30: once more
    assert f.on_catch_up(CatchUpReply(topic="t", partition=0, offset=20, hwm=30), stamped(20, 10), EPOCH)
    assert f.catchup.pending == 0 and f.expected["t/0"] == 30


def test_a_failed_catch_up_read_frees_the_reader_and_is_not_retried_by_itself():
    f, sent = follower({"t/0": 10})
    f.catchup.want("t/0")
    f.catchup.next_read()
    assert f.on_catch_up(CatchUpReply(topic="t", partition=0, offset=10, hwm=20, error="no such offset"), b"", EPOCH)
    assert sent == [] and f.catchup.pending == 0 and f.catchup.bytes == 0
    assert f.master_hwm["t/0"] == 20


def test_a_catch_up_read_of_a_newer_reign_asks_for_a_new_handshake():
    f, sent = follower({"t/0": 10})
    f.catchup.want("t/0")
    f.catchup.next_read()
    reply = CatchUpReply(topic="t", partition=0, offset=10, hwm=20)
    assert f.on_catch_up(reply, stamped(10, 5, epoch=EPOCH + 1), EPOCH) is False
    assert sent == [] and f.expected["t/0"] == 10


def test_a_keep_alive_queues_a_catch_up_only_for_a_partition_that_stalled():
    f, _ = follower({"t/0": 10, "t/1": 10})
    f.on_keepalive({"t/0": 20, "t/1": 20})
    assert f.catchup.pending == 0  # behind, but maybe on the way
    f.expected["t/1"] = 15  # t/1 moved, t/0 did not
    f.on_keepalive({"t/0": 25, "t/1": 25})
    assert list(f.catchup.queue) == ["t/0"]
    assert f.master_hwm == {"t/0": 25, "t/1": 25}
