"""send_batch's list -> batches -> requests (hpbroker/client/split.py), without a broker."""

from __future__ import annotations

from hpbroker import batch
from hpbroker.client.split import encode_requests, group

H, E = batch.HEADER_SIZE, batch.ENTRY_SIZE


def _values(requests) -> list[bytes]:
    return [v for frames in requests for f in frames for v in batch.values_of(f)]


def test_a_list_that_fits_is_one_batch_of_one_request():
    values = [b"a" * 10, b"b" * 20, b"c"]
    reqs = encode_requests(values, None, 1234, max_batch=1 << 20, max_request=1 << 20)
    assert len(reqs) == 1 and len(reqs[0]) == 1
    assert _values(reqs) == values
    assert batch.read_header(reqs[0][0]).first_timestamp == 1234


def test_a_list_over_max_batch_is_cut_into_batches_within_the_limit_in_order():
    values = [bytes([i]) * 100 for i in range(50)]
    max_batch = H + 10 * (100 + E)  # exactly ten records a batch
    reqs = encode_requests(values, None, None, max_batch=max_batch, max_request=1 << 20)
    frames = [f for r in reqs for f in r]
    assert len(reqs) == 1 and len(frames) == 5
    assert all(len(f) <= max_batch for f in frames)
    assert _values(reqs) == values


def test_keys_count_towards_the_batch_size_and_stay_with_their_values():
    values = [b"v" * 50] * 8
    keys = [b"k" * 50 if i % 2 else None for i in range(8)]
    max_batch = H + 3 * (100 + E)
    reqs = encode_requests(values, keys, None, max_batch=max_batch, max_request=1 << 20)
    frames = [f for r in reqs for f in r]
    assert all(len(f) <= max_batch for f in frames)
    assert [r.key for f in frames for r in batch.records_of(f)] == keys


def test_a_value_larger_than_any_batch_gets_a_batch_of_its_own():
    values = [b"s" * 10, b"L" * 1000, b"s" * 10]
    reqs = encode_requests(values, None, None, max_batch=H + 200, max_request=1 << 20)
    frames = [f for r in reqs for f in r]
    assert [batch.values_of(f) for f in frames] == [[values[0]], [values[1]], [values[2]]]


def test_batches_are_grouped_into_requests_of_at_most_max_request_bytes():
    values = [b"x" * 100] * 40
    max_batch = H + 4 * (100 + E)  # ten batches of four
    reqs = encode_requests(values, None, None, max_batch=max_batch, max_request=3 * max_batch)
    assert [len(r) for r in reqs] == [3, 3, 3, 1]
    assert all(sum(map(len, r)) <= 3 * max_batch for r in reqs)
    assert _values(reqs) == values


def test_max_request_below_max_batch_still_lets_one_batch_through():
    values = [b"x" * 100] * 8
    max_batch = H + 4 * (100 + E)
    reqs = encode_requests(values, None, None, max_batch=max_batch, max_request=10)
    assert [len(r) for r in reqs] == [1, 1]


def test_group_keeps_order_and_sends_an_oversized_frame_alone():
    frames = [b"a" * 3, b"b" * 3, b"c" * 10, b"d" * 2]
    assert group(frames, 6) == [[b"aaa", b"bbb"], [b"c" * 10], [b"dd"]]
