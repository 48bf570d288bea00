"""What the commands that read records share: record headers as (name, bytes) pairs, and how they print."""

from __future__ import annotations

_ESCAPES = {ord("\\"): b"\\\\", ord("\n"): b"\\n", ord("\r"): b"\\r", ord("\t"): b"\\t", ord(","): b"\\,",
            ord("="): b"\\="}


class BadHeaders(ValueError):
    """A record's headers bytes that do not decode."""


def header_pairs(headers) -> list[tuple[str, bytes]]:
    """A record's headers as (name, value) pairs, in order.

    ``Message.headers`` is a list of pairs once the client decodes them; a
    client that hands out the record's raw headers bytes (a msgpack array
    of ``[str, bin]`` pairs, hpbroker/batch.py "Record headers") is read
    here instead.  None or empty: no headers.  Raises BadHeaders."""
    if not headers:
        return []
    if isinstance(headers, (bytes, bytearray, memoryview)):
        import msgspec

        from hpbroker import batch

        decode = getattr(batch, "decode_headers", None)
        try:
            if decode is not None:
                return list(decode(bytes(headers)))
            return list(msgspec.msgpack.decode(bytes(headers), type=list[tuple[str, bytes]]))
        except (batch.CorruptBatch, msgspec.DecodeError) as e:
            raise BadHeaders(f"record headers ({len(headers)} bytes) are not a msgpack array of [str, bin] pairs: "
                             f"{e}") from None
    return [(str(n), bytes(v)) for n, v in headers]


def _escape(b: bytes) -> bytes:
    if not any(c in _ESCAPES for c in b):
        return b
    return b"".join(_ESCAPES.get(c, bytes((c,))) for c in b)


def format_headers(pairs: list[tuple[str, bytes]]) -> bytes:
    """``name=value,name=value`` (``\\``, newline, CR, tab, ``,`` and ``=``
    escaped with a backslash, other bytes as they are); ``NO_HEADERS``
    when there are none, as Kafka's console consumer prints."""
    if not pairs:
        return b"NO_HEADERS"
    return b",".join(_escape(n.encode()) + b"=" + _escape(v) for n, v in pairs)
