"""The consumer's fetch buffer, without sockets: a batch that does not
decode stops its partition loudly and loses nothing anywhere."""

from __future__ import annotations

import pytest

from hpbroker import batch
from hpbroker.client.fetcher import Fetcher, Part
from hpbroker.protocol.errors import BrokerError


def fetcher() -> Fetcher:
    return Fetcher(None, max_wait_ms=0, max_bytes=1 << 20, min_bytes=1, reset_needed=lambda p: None,
                   decode_headers=batch.decode_headers)


def stored(values, base: int, headers=None) -> memoryview:
    b = batch.encode_batch(values, headers=headers)
    batch.stamp(b, base, 0)
    return memoryview(bytes(b))


def test_a_batch_with_unreadable_headers_is_an_error_that_keeps_the_position():
    f = fetcher()
    good = f.parts[("t", 0)] = Part("t", 0)
    bad = f.parts[("t", 1)] = Part("t", 1)
    good.position = bad.position = 0
    good.buffer.append((stored([b"a", b"b"], 0), 0))
    bad.buffer.append((stored([b"x", b"y"], 0, headers=[None, b"\xc1junk"]), 0))
    out: list = []
    f.take_messages(good, 10, out)
    f.take_messages(bad, 10, out)
    assert [m.value for m in out] == [b"a", b"b"] and good.position == 2
    assert bad.position == 0 and len(bad.buffer) == 1  # nothing of it consumed or dropped
    with pytest.raises(BrokerError, match="t/1: the batch at offset 0 does not decode"):
        f.raise_errors()
    again: list = []
    f.take_messages(bad, 10, again)  # still there, still an error: never a silent stall
    assert again == [] and bad.error is not None


def test_headers_are_decoded_into_pairs():
    f = fetcher()
    p = f.parts[("t", 0)] = Part("t", 0)
    p.position = 0
    p.buffer.append((stored([b"v"], 7, headers=[batch.encode_headers([("k", b"1"), ("k", b"2")])]), 0))
    out: list = []
    p.position = 7
    f.take_messages(p, 10, out)
    assert out[0].offset == 7 and out[0].headers == [("k", b"1"), ("k", b"2")]
