"""``send_batch``'s list of values, encoded as batches and grouped as requests.

A list that fits the broker's ``max_batch_bytes`` is one ``encode_batch``
call and one request.  A larger one is cut into batches of at most
``max_batch_bytes`` each (the batch header, keys and record headers
included; a record too large for any batch gets one of its own, so it fails
alone), and consecutive batches are grouped into requests of at most
``max_request_bytes``.  The cut points come from a ``cumsum`` and
``searchsorted`` over the record sizes: one numpy pass, not a Python
statement per value.  No sockets, no state: the limits are passed in.
"""

from __future__ import annotations

import numpy as np

from hpbroker import batch


def encode_requests(values, keys, timestamp_ms: int | None, max_batch: int, max_request: int, *,
                    headers=None) -> list[list]:
    """``values`` (and ``keys``, or None; ``headers``, each record's encoded
    headers bytes or None, or None for no headers at all) as a list of
    requests, each a list of encoded batches, in order."""
    n = len(values)
    vlen = np.fromiter(map(len, values), dtype=np.int64, count=n)
    sizes = vlen + batch.ENTRY_SIZE
    if keys is not None:
        sizes += np.fromiter((0 if k is None else len(k) for k in keys), dtype=np.int64, count=n)
    if headers is not None:
        if len(headers) != n:
            raise ValueError("headers must be as long as values")
        sizes += np.fromiter((0 if h is None else len(h) for h in headers), dtype=np.int64, count=n)
    cum = np.cumsum(sizes)
    if int(cum[-1]) + batch.HEADER_SIZE <= max_batch:
        return [[batch.encode_batch(values, keys, timestamp_ms=timestamp_ms, headers=headers, value_lengths=vlen)]]
    frames = []
    start = 0
    room = max_batch - batch.HEADER_SIZE
    while start < n:
        before = int(cum[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(cum, before + room, side="right")))
        frames.append(batch.encode_batch(values[start:end], None if keys is None else keys[start:end],
                                         timestamp_ms=timestamp_ms, value_lengths=vlen[start:end],
                                         headers=None if headers is None else headers[start:end]))
        start = end
    return group(frames, max(max_request, max_batch))


def group(frames: list, max_request: int) -> list[list]:
    """Consecutive ``frames`` in lists of at most ``max_request`` bytes (a
    frame larger than that goes alone)."""
    requests, cur, size = [], [], 0
    for f in frames:
        if cur and size + len(f) > max_request:
            requests.append(cur)
            cur, size = [], 0
        cur.append(f)
        size += len(f)
    requests.append(cur)
    return requests
