"""The text port's answers, byte for byte (docs/protocol-text.md, "Replies").

MetaQ answers every request with a ``result`` (``result code length
opaque\\r\\n`` then ``length`` bytes of message, no trailing CRLF) except a
successful ``get``, which is ``value length opaque\\r\\n`` then the message
set.  Input with no opaque to echo is answered the way memcached answers
it: ``ERROR`` for an unknown command, ``CLIENT_ERROR message`` for a line
that cannot be taken.
"""

from __future__ import annotations

from itertools import chain

import numpy as np

# MetaQ's HttpStatus codes (C/network/HttpStatus.java)
OK = 200
MOVED = 301
BAD_REQUEST = 400
FORBIDDEN = 403
NOT_FOUND = 404
INTERNAL = 500
UNAVAILABLE = 503
TIMEOUT = 504


def result(code: int, opaque: bytes, message: bytes = b"") -> bytes:
    return b"result %d %d %s\r\n%s" % (code, len(message), opaque, message)


def error(code: int, opaque: bytes | None, message: str) -> bytes:
    """A refusal: a ``result`` when the opaque is known, else memcached's CLIENT_ERROR."""
    text = message.replace("\r", " ").replace("\n", " ")
    if opaque is None:
        return b"CLIENT_ERROR %s\r\n" % text.encode("utf-8", "replace")
    return result(code, opaque, text.encode("utf-8", "replace"))


UNKNOWN_COMMAND = b"ERROR\r\n"


def value_head(length: int, opaque: bytes) -> bytes:
    return b"value %d %s\r\n" % (length, opaque)


def put_ok(opaques: list, msg_ids, partition: int, offsets) -> bytes:
    """The successful puts' answers, joined: body ``msgId partition offset``.
    ``msg_ids`` (a range, or ints >= 0) and ``offsets`` (an int64 numpy
    array, >= 0) are counted in digits all at once, and the answers made by
    one ``%`` over a template repeated once per put, so the loop over the
    puts runs in C (about half the time of a format per put)."""
    n = len(opaques)
    p = b" %d " % partition
    o = np.asarray(offsets)
    ids = np.arange(msg_ids.start, msg_ids.stop, dtype=np.int64) if isinstance(msg_ids, range) else \
        np.asarray(msg_ids, dtype=np.int64)
    lens = (_digits(o) + _digits(ids) + len(p)).tolist()
    template = b"result 200 %%d %%s\r\n%%d%s%%d" % p.replace(b"%", b"%%")
    return (template * n) % tuple(chain.from_iterable(zip(lens, opaques, msg_ids, o.tolist())))


def _digits(values: np.ndarray) -> np.ndarray:
    """Decimal digits of each value (>= 0)."""
    return np.searchsorted(_POW10, values, side="right") + 1


_POW10 = np.array([10 ** k for k in range(1, 19)], dtype=np.int64)
