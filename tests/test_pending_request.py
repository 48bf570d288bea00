"""Request tracking on its own: tickets resolved by hand, no storage, no processes."""

from __future__ import annotations

from hpbroker.broker.pending_request import PendingRequest, ReplicaGap, error_code
from hpbroker.io import DiskFull, PartitionFenced, StorageError
from hpbroker.protocol.errors import ErrorCode


def test_a_request_with_two_batches_is_answered_only_when_both_tickets_resolved():
    answers = []
    request = PendingRequest(token=7, batch_count=2, answers=answers)
    first, second = request.ticket(0), request.ticket(1)
    request.appended()
    assert answers == []
    second(None, 5, 9)  # tickets may resolve in any order
    assert answers == []
    first(None, 0, 4)
    assert answers == [(7, 0, "", [0, 5], 9)]


def test_tickets_resolved_before_the_record_is_appended_wait_for_it():
    answers = []
    request = PendingRequest(1, 2, answers)
    request.ticket(0)(None, 0, 0)
    assert answers == []  # a second batch may still be appended
    request.ticket(1)(None, 1, 3)
    request.appended()
    assert answers == [(1, 0, "", [0, 1], 3)]


def test_a_failed_ticket_fails_the_request_with_partition_fenced():
    answers = []
    request = PendingRequest(3, 2, answers)
    ok, failed = request.ticket(0), request.ticket(1)
    request.appended()
    failed(PartitionFenced("t-0: fdatasync failed", "t-0"), 2, 3)
    ok(None, 0, 1)
    assert answers == [(3, int(ErrorCode.PARTITION_FENCED), "t-0: fdatasync failed", [], -1)]


def test_the_first_failure_decides_and_an_append_that_raised_is_not_waited_for():
    answers = []
    request = PendingRequest(4, 3, answers)
    first = request.ticket(0)
    request.ticket(1)  # handed to an append that raised: it never resolves
    request.drop_ticket()
    request.fail(int(ErrorCode.OFFSET_OUT_OF_RANGE), "t/0: a gap")
    request.appended()
    assert answers == []  # the first batch's ticket is still open
    first(DiskFull("t-0: no space", "t-0"), 0, 0)
    assert answers == [(4, int(ErrorCode.OFFSET_OUT_OF_RANGE), "t/0: a gap", [], -1)]


def test_a_request_without_batches_is_answered_when_appended():
    answers = []
    request = PendingRequest(5, 0, answers)  # a TRUNCATE record
    request.last_offset = 99
    request.appended()
    assert answers == [(5, 0, "", [], 99)]


def test_error_codes():
    assert error_code(StorageError("x", "d")) == ErrorCode.PARTITION_FENCED
    assert error_code(DiskFull("x", "d")) == ErrorCode.PARTITION_FENCED
    assert error_code(ReplicaGap("x")) == ErrorCode.OFFSET_OUT_OF_RANGE
    assert error_code(RuntimeError("x")) == ErrorCode.INTERNAL
