"""The text port's answers, byte for byte (docs/protocol-text.md, "Replies").

MetaQ answers every request with a ``result`` (``result code length
opaque\\r\\n`` then ``length`` bytes of message, no trailing CRLF) except a
successful ``get``, which is ``value length opaque\\r\\n`` then the message
set.  Input with no opaque to echo is answered the way memcached answers
it: ``ERROR`` for an unknown command, ``CLIENT_ERROR message`` for a line
that cannot be taken.
"""

from __future__ import annotations

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


def put_ok(opaques: list, msg_ids: list, partition: int, offsets: list) -> list:
    """The successful puts' answers: body ``msgId partition offset``."""
    p = b" %d " % partition
    out = []
    for opaque, msg_id, offset in zip(opaques, msg_ids, offsets):
        body = b"%d%s%d" % (msg_id, p, offset)
        out.append(b"result 200 %d %s\r\n%s" % (len(body), opaque, body))
    return out
