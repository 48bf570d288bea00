"""MetaQ's text protocol, sans-IO: bytes in, commands out.

A command is one header line of fields separated by single spaces and
ended by ``\\r\\n``; ``put`` (and ``sync``) are followed by a body of the
length the line declares, with nothing after it.  The verbs and their
fields, as MetaQ 1.4.6 decodes them (``../shared/METAQ.md`` section 1.1,
docs/protocol-text.md):

===========  =========================================================  ======
verb         fields after the verb                                      body
===========  =========================================================  ======
put          topic partition length flag checksum [txKey] opaque         yes
put (old)    topic partition length flag opaque                          yes
get          topic group partition offset maxSize opaque                 no
offset       topic group partition offset opaque                         no
stats        [item] [opaque]                                             no
version      [opaque]                                                    no
quit                                                                     no
transaction  txKey sessionId type [timeout] [uniqueQualifier] opaque     no
sync         topic partition length flag msgId [checksum] opaque         yes
===========  =========================================================  ======

A 7-field ``put`` carries a checksum when its sixth field starts with a
digit or ``-``, else a transaction key (MetaQ's rule).  :class:`Parser`
keeps no more than ``max_line`` bytes of an unfinished line and ``max_line
+ max_body`` of an unfinished put; a body longer than ``max_body`` is
skipped as it arrives (never buffered) and answered with an error.

What it returns for input it cannot take (:class:`Refused`):

* a line with a bad field: an error for that command, and the parse goes
  on after it (after its body too, when the body length could be read);
* a put whose body length cannot be read, or a line longer than
  ``max_line``: an error, then nothing more (``fatal``: the stream cannot
  be resynchronised, so the connection is closed, as MetaQ closes it);
* an unknown verb or a blank line: ``unknown`` (memcached's ``ERROR``), and
  the parse goes on.
"""

from __future__ import annotations

import re

from hpbroker.text.putscan import scan
from hpbroker.text.commands import (TRANSACTION_TYPES, Get, Offset, Put, PutRun, Quit, Refused, Stats,  # noqa: F401
                                    Transaction, Version)

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

CRLF = b"\r\n"


class BadField(ValueError):
    pass


def _int(field: bytes, what: str, lo: int, hi: int) -> int:
    # int() takes surrounding whitespace, "_" separators and "+": MetaQ's
    # Integer.parseInt takes a sign and digits only
    if not field or not (field.isdigit() or (field[:1] in (b"-", b"+") and field[1:].isdigit())):
        raise BadField(f"{what} {_show(field)} is not an integer")
    v = int(field)
    if not lo <= v <= hi:
        raise BadField(f"{what} {v} is out of range [{lo}, {hi}]")
    return v


def _opaque(field: bytes) -> bytes:
    _int(field, "opaque", INT32_MIN, INT32_MAX)
    return field


def _text(field: bytes, what: str) -> str:
    if not field:
        raise BadField(f"{what} is empty")
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError:
        raise BadField(f"{what} {_show(field)} is not UTF-8") from None


def _show(field: bytes, limit: int = 40) -> str:
    s = field[:limit].decode("latin-1")
    return repr(s + "..." if len(field) > limit else s)


class Parser:
    """One connection's parser: :meth:`feed` each chunk read, get the
    commands it completes.  Bodies are memoryviews into the chunks fed (no
    copy), valid as long as the caller keeps them."""

    def __init__(self, max_line: int = 4096, max_body: int = 1 << 20):
        self.max_line = max_line
        self.max_body = max_body
        self._buf = b""
        self._skip = 0  # body bytes of a refused put still to discard
        self.closed = False  # a fatal refusal was returned: no more commands
        self.fast = True  # read runs of simple puts as PutRun (tests compare with False)

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished command."""
        return len(self._buf)

    def feed(self, data) -> list:
        if self.closed or not data:
            return []
        out: list = []
        if self._skip:
            take = min(self._skip, len(data))
            self._skip -= take
            if take == len(data):
                return out
            data = data[take:]
        buf = self._buf + data if self._buf else bytes(data)
        self._buf = b""
        pos = self._parse(buf, out)
        if not self.closed and pos < len(buf):
            self._buf = buf[pos:]
        return out

    def _parse(self, buf: bytes, out: list) -> int:
        n = len(buf)
        pos = 0
        mv = memoryview(buf)
        find = buf.find
        max_line = self.max_line
        while pos < n:
            e = find(CRLF, pos, pos + max_line + 2)
            if e < 0:
                if n - pos > max_line + 1:  # (+1: a line of max_line whose \r arrived without its \n)
                    self._fatal(out, f"command line longer than {max_line} bytes")
                return pos
            line = buf[pos:e]
            parts = line.split(b" ")
            verb = parts[0]
            start = e + 2
            if verb == b"put":
                if len(parts) in (6, 7) and self.fast:
                    r = self._run(parts, line, buf, mv, pos, start, n, out)
                    if r > 0:
                        pos = r
                        continue
                r = self._put(parts, buf, mv, start, n, out)
                if r < 0:  # the body has not all arrived yet
                    return pos
                pos = r
                if self.closed:
                    return pos
                continue
            pos = start
            try:
                if verb == b"get":
                    if len(parts) != 7:
                        raise BadField(f"get takes 6 fields, got {len(parts) - 1}")
                    out.append(Get(_text(parts[1], "topic"), _text(parts[2], "group"),
                                   _int(parts[3], "partition", INT32_MIN, INT32_MAX),
                                   _int(parts[4], "offset", INT64_MIN, INT64_MAX),
                                   _int(parts[5], "maxSize", INT32_MIN, INT32_MAX), _opaque(parts[6])))
                elif verb == b"offset":
                    if len(parts) != 6:
                        raise BadField(f"offset takes 5 fields, got {len(parts) - 1}")
                    out.append(Offset(_text(parts[1], "topic"), _text(parts[2], "group"),
                                      _int(parts[3], "partition", INT32_MIN, INT32_MAX),
                                      _int(parts[4], "offset", INT64_MIN, INT64_MAX), _opaque(parts[5])))
                elif verb == b"stats":
                    self._stats(parts, out)
                elif verb == b"version":
                    if len(parts) > 2:
                        raise BadField(f"version takes at most 1 field, got {len(parts) - 1}")
                    out.append(Version(_opaque(parts[1]) if len(parts) == 2 else None))
                elif verb == b"quit":
                    out.append(Quit())
                elif verb == b"transaction":
                    out.append(self._transaction(parts))
                elif verb == b"sync":
                    pos = self._sync(parts, start, n, out)
                    if self.closed:
                        return pos
                else:
                    out.append(Refused(400, f"unknown command {_show(verb)}", unknown=True))
            except BadField as err:
                out.append(Refused(400, f"{verb.decode('latin-1')}: {err}", _opaque_or_none(parts)))
        return pos

    # -- put ---------------------------------------------------------------------

    def _put(self, parts, buf, mv, start, n, out) -> int:
        """The position after the put at ``start`` (its body), or -1 until
        the whole body is there."""
        nf = len(parts)
        try:
            length = _int(parts[3], "value-length", 0, INT32_MAX) if nf > 3 else None
        except BadField as err:
            length = None
            why = str(err)
        else:
            why = f"put takes 5, 6 or 7 fields, got {nf - 1}"
        if length is None or nf not in (6, 7, 8):
            if length is None:
                self._fatal(out, f"put: {why}", _opaque_or_none(parts))
                return start
            return self._skip_body(out, length, start, n, Refused(400, f"put: {why}", _opaque_or_none(parts)))
        if length > self.max_body:
            return self._skip_body(out, length, start, n,
                                   Refused(400, f"put: message of {length} bytes is larger than the limit of "
                                                f"{self.max_body} (text_protocol.max_body_bytes)", _opaque_or_none(parts)))
        end = start + length
        if end > n:
            return -1
        try:
            topic = _text(parts[1], "topic")
            partition = _int(parts[2], "partition", INT32_MIN, INT32_MAX)
            flag = _int(parts[4], "flag", INT32_MIN, INT32_MAX)
            tx_key = None
            checksum = -1
            if nf == 6:
                opaque = _opaque(parts[5])
            elif nf == 7:
                slot = parts[5]
                if slot[:1].isdigit() or slot[:1] == b"-":
                    checksum = _int(slot, "checksum", INT32_MIN, INT32_MAX)
                else:
                    tx_key = _text(slot, "transaction key")
                opaque = _opaque(parts[6])
            else:
                checksum = _int(parts[5], "checksum", INT32_MIN, INT32_MAX)
                tx_key = _text(parts[6], "transaction key")
                opaque = _opaque(parts[7])
        except BadField as err:
            out.append(Refused(400, f"put: {err}", _opaque_or_none(parts)))
            return end
        out.append(Put(topic, partition, flag, checksum, tx_key, opaque, mv[start:end]))
        return end

    def _run(self, parts, line, buf, mv, pos, start, n, out) -> int:
        """Read consecutive puts that share this one's topic and partition
        (no transaction key, bodies complete) as one PutRun: the position
        after them, or 0 to let the one-command path read this put."""
        nf = len(parts)
        if nf == 7 and not (parts[5][:1].isdigit() or parts[5][:1] == b"-"):
            return 0  # a transaction key
        try:
            topic = _text(parts[1], "topic")
            partition = _int(parts[2], "partition", INT32_MIN, INT32_MAX)
        except BadField:
            return 0
        head = b"put %s %s " % (parts[1], parts[2])
        want = nf - 3  # fields after the head: length flag [checksum] opaque
        found = scan(buf, pos, n, head, want, self.max_line, self.max_body)
        if found is None:
            bodies, flags, sums, opaques, at = self._run_loop(line, buf, mv, pos, start, n, head, want)
            if not bodies:
                return 0
            sum_values = None
            if sums and sums.count(b"-1") != len(sums):
                sum_values = _int32s(sums)
                if sum_values is None:
                    return 0
            if not _all_int32(opaques):
                return 0  # a bad field somewhere: the one-command path says which
        else:  # putscan checked the fields: their form, the int32s' ranges, the bodies' lengths
            starts, ends, fields, values = found
            if not len(starts):
                return 0
            bodies = list(map(mv.__getitem__, map(slice, starts.tolist(), ends.tolist())))
            opaques = fields[want - 1::want]
            at = int(ends[-1])
            sum_values = None
            if want == 4 and (values[:, 2] != -1).any():
                sum_values = values[:, 2]
            flag_values = None if not values[:, 1].any() else values[:, 1].tolist()
            out.append(PutRun(topic, partition, bodies, opaques, flag_values, sum_values))
            return at
        plain = flags.count(b"0") == len(flags)
        flag_values = None if plain else _int32s(flags)
        if flag_values is None and not plain:
            return 0
        out.append(PutRun(topic, partition, bodies, opaques, flag_values, sum_values))
        return at

    def _run_loop(self, line, buf, mv, pos, start, n, head, want):
        """The run read one put at a time (when :func:`putscan.scan` gives up)."""
        hl = len(head)
        find = buf.find
        max_line, max_body = self.max_line, self.max_body
        bodies, flags, sums, opaques = [], [], [], []
        at = pos
        e = start - 2
        while True:
            rest = line[hl:].split(b" ")
            if len(rest) != want:
                break
            ln = rest[0]
            if not ln.isdigit() or len(ln) > 10:
                break
            length = int(ln)
            s = e + 2
            end = s + length
            if length > max_body or end > n:
                break
            bodies.append(mv[s:end])
            flags.append(rest[1])
            if want == 4:
                sums.append(rest[2])
            opaques.append(rest[-1])
            at = end
            e = find(CRLF, at, at + max_line + 2)
            if e < 0:
                break
            line = buf[at:e]
            if not line.startswith(head):
                break
        return bodies, flags, sums, opaques, at

    def _skip_body(self, out, length: int, start: int, n: int, refusal: Refused) -> int:
        out.append(refusal)
        have = n - start
        if have >= length:
            return start + length
        self._skip = length - have
        return n

    def _sync(self, parts, start, n, out) -> int:
        try:
            length = _int(parts[3], "value-length", 0, INT32_MAX) if len(parts) > 3 else None
        except BadField:
            length = None
        if length is None:
            self._fatal(out, "sync: the body length cannot be read", _opaque_or_none(parts))
            return start
        return self._skip_body(out, length, start, n,
                               Refused(400, "sync is MetaQ's master-to-slave replication; hpbroker replicates over its "
                                            "own protocol (docs/replication.md)", _opaque_or_none(parts)))

    # -- the others ------------------------------------------------------------------

    @staticmethod
    def _stats(parts, out) -> None:
        # MetaQ's Java client sends "stats <item> <opaque>", with an empty item
        # when it wants the default one ("stats  <opaque>"); memcached tools
        # send "stats" or "stats <item>" with no opaque.
        nf = len(parts)
        if nf > 3:
            raise BadField(f"stats takes at most 2 fields, got {nf - 1}")
        item = parts[1].decode("utf-8", "replace") if nf > 1 else ""
        opaque = None
        if nf == 3:
            try:
                opaque = _opaque(parts[2])
            except BadField:
                opaque = None  # "stats detail on": memcached's, no opaque
                item = f"{item} {parts[2].decode('utf-8', 'replace')}"
        out.append(Stats(item, opaque))

    @staticmethod
    def _transaction(parts) -> Transaction:
        nf = len(parts)
        if nf not in (5, 6, 7):
            raise BadField(f"transaction takes 4, 5 or 6 fields, got {nf - 1}")
        tx_key = _text(parts[1], "transaction key")
        session = _text(parts[2], "session id")
        kind = _text(parts[3], "type")
        if kind not in TRANSACTION_TYPES:
            raise BadField(f"unknown transaction type {kind!r}")
        timeout = 0
        qualifier = None
        if nf == 6:
            f = parts[4]
            if f.isdigit() or f[:1] == b"-":
                timeout = _int(f, "timeout", INT32_MIN, INT32_MAX)
            else:
                qualifier = _text(f, "unique qualifier")
        elif nf == 7:
            timeout = _int(parts[4], "timeout", INT32_MIN, INT32_MAX)
            qualifier = _text(parts[5], "unique qualifier")
        return Transaction(tx_key, session, kind, timeout, qualifier, _opaque(parts[-1]))

    def _fatal(self, out, message: str, opaque: bytes | None = None) -> None:
        out.append(Refused(400, message, opaque, fatal=True))
        self.closed = True
        self._buf = b""


_INTS = re.compile(rb"-?[0-9]{1,10}(?: -?[0-9]{1,10})*")


def _int32s(fields: list) -> list[int] | None:
    """The fields as ints when every one is a valid int32 as _int reads it, else None."""
    if not _INTS.fullmatch(b" ".join(fields)):
        return None
    values = list(map(int, fields))
    if min(values) < INT32_MIN or max(values) > INT32_MAX:
        return None
    return values


def _all_int32(fields: list) -> bool:
    """_int32s without building the values (opaques are echoed as sent)."""
    if not _INTS.fullmatch(b" ".join(fields)):
        return False
    if max(map(len, fields)) < 10:  # at most 9 digits (or a sign and 8): always in range
        return True
    values = list(map(int, fields))
    return min(values) >= INT32_MIN and max(values) <= INT32_MAX


def _opaque_or_none(parts) -> bytes | None:
    """The last field when it is a valid opaque (where every verb keeps it)."""
    if len(parts) < 2:
        return None
    try:
        return _opaque(parts[-1])
    except BadField:
        return None
