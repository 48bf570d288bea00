"""A MetaQ text-protocol client, written from the wire format in
``../shared/METAQ.md`` (sections 1.1, 1.2, 1.7) and nothing of hpbroker's.

It sends what MetaQ's clients send: ``put`` in the 1.4.4+ form (with a
checksum, CRC32 & 0x7FFFFFFF of the body) and in the old 6-field form the
Python client still uses, with a transaction key inside a transaction;
``get``, ``offset``, ``stats [item] [opaque]``, ``version``, ``quit``; and
``transaction txKey sessionId type [timeout] [uniqueQualifier] opaque``
(section 1.1, 1.3, 1.4: keys ``TX:<sessionId>:<n>`` and
``XID:<formatId>:<hex gtrid>:<hex bqual>:<uniqueQualifier>``).  Replies are ``result code len opaque\\r\\n<body>``
or, for a get, ``value totalLen opaque\\r\\n<message set>``.  A message in
the set is (big-endian) length (4), CRC (4), msgId (8), flag (4), then, when
flag bit 0 is set, attrLen (4) and the attribute, then the data; length
counts attribute part and data.

Offsets are MetaQ byte offsets: a consumer asks at an offset and moves on
by the bytes of the messages it takes (:meth:`MetaQClient.consume`), as
MetaQ's ``MessageIterator`` does; ``301 <offset>`` moves it.
"""

from __future__ import annotations

import socket
import struct
import zlib
from dataclasses import dataclass


class MetaQError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Message:
    offset: int  # MetaQ offset of the message: where it starts
    msg_id: int
    flag: int
    attribute: bytes | None
    data: bytes
    size: int  # bytes it takes in the message set


@dataclass
class Moved(Exception):
    """A get answered 301: go on at ``offset``."""

    offset: int


def checksum(body: bytes) -> int:
    return zlib.crc32(body) & 0x7FFFFFFF


def put_body(data: bytes, attribute: bytes | None) -> tuple[bytes, int]:
    """(body, flag): MetaQ's payload, with the attribute in front when given."""
    if attribute is None:
        return data, 0
    return struct.pack(">i", len(attribute)) + attribute + data, 1


def put_command(topic: str, partition: int, data: bytes, opaque: int, *, attribute: bytes | None = None,
                old_form: bool = False, crc: int | None = None, tx_key: str | None = None) -> bytes:
    body, flag = put_body(data, attribute)
    tx = "" if tx_key is None else f" {tx_key}"
    if old_form:
        head = f"put {topic} {partition} {len(body)} {flag}{tx} {opaque}\r\n"
    else:
        head = f"put {topic} {partition} {len(body)} {flag} {checksum(body) if crc is None else crc}{tx} {opaque}\r\n"
    return head.encode() + body


def local_key(session: str, n: int) -> str:
    """A local transaction's key: ``TX:<sessionId>:<n>``."""
    return f"TX:{session}:{n}"


def xa_key(format_id: int, gtrid: bytes, bqual: bytes, uq: str | None = None) -> str:
    """An XA branch's key: ``XID:<formatId>:<hex gtrid>:<hex bqual>:<uniqueQualifier>``."""
    key = f"XID:{format_id}:{gtrid.hex()}:{bqual.hex()}"
    return key if uq is None else f"{key}:{uq}"


def transaction_command(key: str, session: str, kind: str, opaque: int, timeout: int = 0,
                        uq: str | None = None) -> bytes:
    """``transaction txKey sessionId type [timeout] [uniqueQualifier] opaque``
    (the timeout only when positive, as MetaQ's TransactionCommand writes it)."""
    fields = [key, session, kind] + ([str(timeout)] if timeout > 0 else []) + ([uq] if uq else []) + [str(opaque)]
    return ("transaction " + " ".join(fields) + "\r\n").encode()


def parse_messages(data: bytes, start_offset: int) -> tuple[list[Message], int]:
    """The whole messages in a get's message set, and the bytes they take
    (a trailing partial message is left, as MetaQ's iterator leaves it)."""
    out = []
    pos = 0
    while len(data) - pos >= 20:
        length, crc, msg_id, flag = struct.unpack_from(">iiqi", data, pos)
        if len(data) - pos - 20 < length:
            break
        payload = data[pos + 20:pos + 20 + length]
        if checksum(payload) != crc:
            raise AssertionError(f"bad CRC in message at {start_offset + pos}")
        attribute = None
        if flag & 1:
            n = struct.unpack_from(">i", payload, 0)[0]
            attribute = payload[4:4 + n]
            payload = payload[4 + n:]
        out.append(Message(start_offset + pos, msg_id, flag, attribute, payload, 20 + length))
        pos += 20 + length
    return out, pos


class MetaQClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._opaque = 0

    @classmethod
    def over(cls, sock: socket.socket) -> "MetaQClient":
        """A client reading replies from a socket the caller writes to."""
        c = cls.__new__(cls)
        c.sock, c.buf, c._opaque = sock, b"", 0
        return c

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def next_opaque(self) -> int:
        self._opaque += 1
        return self._opaque

    # -- reading replies ------------------------------------------------------------

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        self.buf += chunk

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_reply(self) -> tuple[str, int, int, bytes]:
        """(kind, code, opaque, body): kind "result" or "value" (code 200)."""
        fields = self.read_line().split(b" ")
        if fields[0] == b"result":
            code, length, opaque = int(fields[1]), int(fields[2]), int(fields[3])
            return "result", code, opaque, self.read_exact(length)
        if fields[0] == b"value":
            length, opaque = int(fields[1]), int(fields[2])
            return "value", 200, opaque, self.read_exact(length)
        raise AssertionError(f"unexpected reply line {b' '.join(fields)!r}")

    def _result(self, opaque: int) -> bytes:
        kind, code, got, body = self.read_reply()
        assert got == opaque, (got, opaque)
        if code != 200:
            raise MetaQError(code, body.decode(errors="replace"))
        return body

    # -- commands ------------------------------------------------------------------------

    def put(self, topic: str, partition: int, data: bytes, attribute: bytes | None = None,
            old_form: bool = False) -> tuple[int, int, int]:
        """(msgId, partition, offset) of the stored message."""
        opaque = self.next_opaque()
        self.sock.sendall(put_command(topic, partition, data, opaque, attribute=attribute, old_form=old_form))
        msg_id, part, offset = self._result(opaque).split(b" ")
        return int(msg_id), int(part), int(offset)

    def put_many(self, topic: str, partition: int, values: list[bytes], attribute: bytes | None = None) -> list:
        """Pipelined puts (all sent, then all answers read): (msgId, partition, offset) each."""
        opaques = [self.next_opaque() for _ in values]
        self.sock.sendall(b"".join(put_command(topic, partition, v, o, attribute=attribute)
                                   for v, o in zip(values, opaques)))
        out = []
        for o in opaques:
            msg_id, part, offset = self._result(o).split(b" ")
            out.append((int(msg_id), int(part), int(offset)))
        return out

    def put_tx(self, key: str, topic: str, partition: int, values: list[bytes]) -> list[tuple[int, int, int]]:
        """Pipelined puts inside transaction ``key``: (msgId, partition, offset) each (offset -1: not yet visible)."""
        opaques = [self.next_opaque() for _ in values]
        self.sock.sendall(b"".join(put_command(topic, partition, v, o, tx_key=key) for v, o in zip(values, opaques)))
        out = []
        for o in opaques:
            msg_id, part, offset = self._result(o).split(b" ")
            out.append((int(msg_id), int(part), int(offset)))
        return out

    def transaction(self, key: str, kind: str, *, session: str = "s1", timeout: int = 0,
                    uq: str | None = None) -> bytes:
        """One transaction command; its reply body (MetaQError on a code other than 200).
        END is sent one way (MetaQ's broker never answers it): None."""
        opaque = self.next_opaque()
        self.sock.sendall(transaction_command(key, session, kind, opaque, timeout, uq))
        if kind == "END":
            return None
        return self._result(opaque)

    def get(self, topic: str, group: str, partition: int, offset: int, max_size: int = 1 << 20) -> list[Message]:
        """Messages from ``offset``; raises Moved (301) or MetaQError (404, ...)."""
        opaque = self.next_opaque()
        self.sock.sendall(f"get {topic} {group} {partition} {offset} {max_size} {opaque}\r\n".encode())
        kind, code, got, body = self.read_reply()
        assert got == opaque
        if kind == "value":
            return parse_messages(body, offset)[0]
        if code == 301:
            raise Moved(int(body))
        raise MetaQError(code, body.decode(errors="replace"))

    def consume(self, topic: str, group: str, partition: int, offset: int, max_size: int = 1 << 20,
                limit: int | None = None) -> tuple[list[Message], int]:
        """Read on from ``offset`` until nothing is left (404) or ``limit``
        messages: (messages, the offset to go on from)."""
        out: list[Message] = []
        while limit is None or len(out) < limit:
            try:
                msgs = self.get(topic, group, partition, offset, max_size)
            except Moved as m:
                offset = m.offset
                continue
            except MetaQError as e:
                if e.code == 404:
                    break
                raise
            if not msgs:
                max_size *= 2  # a message larger than max_size: ask for more
                continue
            if limit is not None:
                msgs = msgs[:limit - len(out)]
            out += msgs
            offset = msgs[-1].offset + msgs[-1].size
        return out, offset

    def offset(self, topic: str, group: str, partition: int, offset: int) -> int:
        opaque = self.next_opaque()
        self.sock.sendall(f"offset {topic} {group} {partition} {offset} {opaque}\r\n".encode())
        return int(self._result(opaque))

    def version(self) -> str:
        opaque = self.next_opaque()
        self.sock.sendall(f"version {opaque}\r\n".encode())
        return self._result(opaque).decode()

    def stats(self, item: str = "") -> list[list[str]]:
        """MetaQ's stats: the lines between STATS and END, split into fields."""
        opaque = self.next_opaque()
        self.sock.sendall(f"stats {item} {opaque}\r\n".encode())
        body = self._result(opaque).decode()
        lines = body.split("\r\n")
        assert lines[0] == "STATS" and lines[-2:] == ["END", ""], body
        return [line.split(" ") for line in lines[1:-2]]

    def quit(self) -> None:
        self.sock.sendall(b"quit\r\n")
