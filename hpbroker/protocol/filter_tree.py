"""The filter language's parsed tree and its parser (docs/protocol.md,
"Filters"; the language is drawn in :mod:`hpbroker.protocol.filters`).

:class:`Parser` turns a filter given as Python data (what msgpack decodes
to) into a tree of :class:`And`, :class:`Or`, :class:`Not`, :class:`Key`
and :class:`Header` nodes, checking the limits below as it goes, and
collects the header leaves, each with its bit (``slot``) in the per-record
header mask that :mod:`hpbroker.protocol.filter_eval` computes."""

from __future__ import annotations

from typing import Any

MAX_FILTER_BYTES = 4096
MAX_DEPTH = 8
MAX_TERMS = 64
MAX_VALUES = 256
MAX_STRING = 256

TESTS = ("eq", "in", "prefix", "suffix", "exists")


class FilterError(ValueError):
    """A filter that is not in the language, or over a limit; the message
    says which part (``filter.and[1].in[3]: ...``)."""


class And:
    __slots__ = ("kids",)

    def __init__(self, kids):
        self.kids = kids


class Or(And):
    __slots__ = ()


class Not:
    __slots__ = ("kid",)

    def __init__(self, kid):
        self.kid = kid


class Test:
    """A test on one byte string: ``op`` and its argument (``values`` for
    eq/in/prefix/suffix, ``present`` for exists)."""

    __slots__ = ("op", "values", "present")

    def __init__(self, op: str, values: tuple[bytes, ...] = (), present: bool = True):
        self.op = op
        self.values = values
        self.present = present

    def passes(self, v: bytes) -> bool:
        op = self.op
        if op == "eq" or op == "in":
            return v in self.values
        if op == "prefix":
            return v.startswith(self.values[0])
        return v.endswith(self.values[0])  # suffix


class Key:
    __slots__ = ("test",)

    def __init__(self, test: Test):
        self.test = test


class Header:
    __slots__ = ("name", "test", "slot", "needles", "default")

    def __init__(self, name: str, test: Test, slot: int):
        self.name = name
        self.test = test
        self.slot = slot  # its bit in the per-record header mask
        # Byte strings one of which the headers bytes of every record this
        # test holds for contain verbatim (msgpack stores a str's UTF-8 and a
        # bin's bytes as they are): the value when it is not empty, else the
        # name.  A record whose headers contain none of them gets ``default``,
        # the test's answer for a record without that header.
        raw_name = name.encode("utf-8", "surrogatepass")
        if test.op == "exists":
            self.needles = (raw_name,)
        else:
            self.needles = tuple(dict.fromkeys(v or raw_name for v in test.values))
        self.default = test.op == "exists" and not test.present

    def holds(self, pairs) -> bool:
        t = self.test
        if t.op == "exists":
            return any(n == self.name for n, _ in pairs) == t.present
        return any(n == self.name and t.passes(v) for n, v in pairs)


class Parser:
    def __init__(self):
        self.terms = 0
        self.values = 0
        self.headers: list[Header] = []

    def node(self, obj: Any, path: str, depth: int):
        if depth > MAX_DEPTH:
            raise FilterError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"{path}: more than {MAX_TERMS} terms (and/or/not/key/header maps)")
        if not isinstance(obj, dict):
            raise FilterError(f"{path}: a filter is a map, got {kind(obj)}")
        for k in obj:
            if not isinstance(k, str):
                raise FilterError(f"{path}: map keys are strings, got {kind(k)}")
        if "header" in obj:
            return self.header(obj, path)
        if len(obj) != 1:
            raise FilterError(f"{path}: expected one of {{'and': [...]}}, {{'or': [...]}}, {{'not': ...}}, "
                              f"{{'key': {{test}}}} or {{'header': name, test}}, got keys {sorted(obj)}")
        (op, arg), = obj.items()
        if op in ("and", "or"):
            if not isinstance(arg, list) or not arg:
                raise FilterError(f"{path}.{op}: a non-empty list of filters, got {kind(arg, empty=True)}")
            if len(arg) > MAX_TERMS:
                raise FilterError(f"{path}.{op}: more than {MAX_TERMS} terms")
            kids = [self.node(x, f"{path}.{op}[{i}]", depth + 1) for i, x in enumerate(arg)]
            return (And if op == "and" else Or)(kids)
        if op == "not":
            return Not(self.node(arg, f"{path}.not", depth + 1))
        if op == "key":
            if not isinstance(arg, dict) or len(arg) != 1:
                raise FilterError(f"{path}.key: a map holding one test ({', '.join(TESTS)}), got "
                                  + (f"keys {sorted(map(str, arg))}" if isinstance(arg, dict) else kind(arg)))
            (t, targ), = arg.items()
            return Key(self.test(t, targ, f"{path}.key"))
        raise FilterError(f"{path}: unknown operator {op!r} (expected and, or, not, key or header)")

    def header(self, obj: dict, path: str) -> Header:
        name = obj["header"]
        if not isinstance(name, str) or not name:
            raise FilterError(f"{path}.header: a header name is a non-empty string, got {kind(name)}")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_STRING:
            raise FilterError(f"{path}.header: name longer than {MAX_STRING} bytes")
        rest = [k for k in obj if k != "header"]
        if len(rest) != 1:
            raise FilterError(f"{path}: a header filter holds its name and exactly one test "
                              f"({', '.join(TESTS)}), got {sorted(rest) or 'none'}")
        t = rest[0]
        h = Header(name, self.test(t, obj[t], path), len(self.headers))
        self.headers.append(h)
        return h

    def test(self, op: Any, arg: Any, path: str) -> Test:
        if op not in TESTS:
            raise FilterError(f"{path}: unknown test {op!r} (expected one of {', '.join(TESTS)})")
        path = f"{path}.{op}"
        if op == "exists":
            if not isinstance(arg, bool):
                raise FilterError(f"{path}: true or false, got {kind(arg)}")
            return Test(op, present=arg)
        if op == "in":
            if not isinstance(arg, list) or not arg:
                raise FilterError(f"{path}: a non-empty list of values, got {kind(arg, empty=True)}")
            values = tuple(self.value(v, f"{path}[{i}]") for i, v in enumerate(arg))
            return Test(op, tuple(dict.fromkeys(values)))
        return Test(op, (self.value(arg, path),))

    def value(self, v: Any, path: str) -> bytes:
        self.values += 1
        if self.values > MAX_VALUES:
            raise FilterError(f"{path}: more than {MAX_VALUES} values in the filter")
        if isinstance(v, str):
            try:
                v = v.encode("utf-8")
            except UnicodeEncodeError:
                raise FilterError(f"{path}: not valid UTF-8") from None
        elif not isinstance(v, bytes):
            raise FilterError(f"{path}: a value is a string or bytes, got {kind(v)}")
        if len(v) > MAX_STRING:
            raise FilterError(f"{path}: value longer than {MAX_STRING} bytes ({len(v)})")
        return v


def kind(x: Any, empty: bool = False) -> str:
    if x is None:
        return "null"
    if empty and isinstance(x, list) and not x:
        return "an empty list"
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", bytes: "bytes",
            list: "a list", dict: "a map"}.get(type(x), type(x).__name__)
