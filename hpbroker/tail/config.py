"""``hpbroker tail``'s settings: the agent's knobs and one entry per source.

Built from a TOML file (:func:`load`) or from the command line's single
source (:func:`single_source`), and checked here: every problem is one
:class:`ConfigError` line naming the key (``source[2].multiline_start:
bad regex ...``), which the command prints and exits 2 on.  docs/tail.md
documents every key; ``tests/test_tail_config.py`` checks that it does.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass, field, fields

DEFAULT_STATE_DIR = "~/.hpbroker/tail"


class ConfigError(ValueError):
    """A bad setting; its message is one line naming the key."""


@dataclass
class Source:
    topic: str
    paths: list[str]
    name: str = ""
    file_regex: str | None = None
    encoding: str = "utf-8"
    multiline_start: str | None = None
    multiline_timeout_ms: int = 2000
    key: str | None = None
    key_regex: str | None = None
    partition: int | None = None
    # compiled by check(): bytes patterns for ASCII-safe encodings, else str patterns (slow path)
    file_rx: re.Pattern | None = field(default=None, repr=False, compare=False)
    start_rx: re.Pattern | None = field(default=None, repr=False, compare=False)
    key_rx: re.Pattern | None = field(default=None, repr=False, compare=False)
    key_bytes: bytes | None = field(default=None, repr=False, compare=False)
    fast: bool = field(default=True, repr=False, compare=False)  # patterns run on the raw bytes


@dataclass
class Agent:
    sources: list[Source]
    state_dir: str = DEFAULT_STATE_DIR
    poll_interval_ms: int = 250
    status_interval_ms: int = 5000
    acks: int | str = 1
    max_inflight_bytes: int = 32 << 20
    read_bytes: int = 1 << 20
    max_record_bytes: int = 512 << 10
    checkpoint_interval_ms: int = 0
    shutdown_timeout_ms: int = 10_000
    close_inactive_ms: int = 5000
    retry_backoff_ms: int = 500
    broker_stall_ms: int = 5000
    max_in_flight: int = 1
    start_at: str = "beginning"
    fingerprint_bytes: int = 1024


#: the settings a TOML file may hold at its top level, and each one's bounds (int) or choices
AGENT_KEYS: dict[str, tuple] = {
    "state_dir": (str,),
    "poll_interval_ms": (int, 10, 60_000),
    "status_interval_ms": (int, 100, 3_600_000),
    "acks": ("choice", 1, "all"),
    "max_inflight_bytes": (int, 4096, 1 << 34),
    "read_bytes": (int, 4096, 64 << 20),
    "max_record_bytes": (int, 64, 4 << 20),
    "checkpoint_interval_ms": (int, 0, 3_600_000),
    "shutdown_timeout_ms": (int, 0, 3_600_000),
    "close_inactive_ms": (int, 0, 86_400_000),
    "retry_backoff_ms": (int, 10, 60_000),
    "broker_stall_ms": (int, 100, 3_600_000),
    "max_in_flight": (int, 1, 64),
    "start_at": ("choice", "beginning", "end"),
    "fingerprint_bytes": (int, 16, 1 << 20),
}

SOURCE_KEYS: dict[str, tuple] = {
    "name": (str,),
    "topic": (str,),
    "paths": ("paths",),
    "file_regex": (str,),
    "encoding": (str,),
    "multiline_start": (str,),
    "multiline_timeout_ms": (int, 0, 3_600_000),
    "key": (str,),
    "key_regex": (str,),
    "partition": (int, 0, 1 << 20),
}

#: single-byte encodings and UTF-8: an ASCII byte in the file is always that ASCII character,
#: so a pattern of ASCII can run on the raw bytes
_UTF8 = {"utf-8", "utf_8"}


def _check_value(where: str, value, spec: tuple):
    kind = spec[0]
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        lo, hi = spec[1], spec[2]
        if not lo <= value <= hi:
            raise ConfigError(f"{where}: {value} is out of range [{lo}, {hi}]")
        return value
    if kind == "choice":
        if value not in spec[1:] or isinstance(value, bool):
            raise ConfigError(f"{where}: expected one of {', '.join(repr(c) for c in spec[1:])}, got {value!r}")
        return value
    if kind == "paths":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
            raise ConfigError(f"{where}: expected a non-empty list of paths or globs, got {value!r}")
        return value
    raise AssertionError(kind)


def _ascii_safe(encoding: str) -> bool:
    """Does every ASCII byte of a text in ``encoding`` stand for that ASCII
    character (so patterns of ASCII may run on the raw bytes)?  True for
    UTF-8 and the single-byte encodings."""
    name = codecs.lookup(encoding).name
    if name in _UTF8:
        return True
    try:
        return len(bytes(range(256)).decode(encoding)) == 256
    except UnicodeDecodeError:
        return False


def _compile(where: str, pattern: str, source: Source, fast: bool) -> re.Pattern:
    try:
        re.compile(pattern)  # report the error against the text as written
        if fast:
            return re.compile(pattern.encode(source.encoding))
        return re.compile(pattern)
    except (re.error, UnicodeEncodeError) as e:
        raise ConfigError(f"{where}: bad regex {pattern!r}: {e}") from None


def check_source(src: Source, where: str) -> Source:
    """Validate one source and compile its patterns (in place); returns it."""
    if not src.topic:
        raise ConfigError(f"{where}.topic: must not be empty")
    try:
        info = codecs.lookup(src.encoding)
    except LookupError:
        raise ConfigError(f"{where}.encoding: unknown encoding {src.encoding!r}") from None
    if "\n".encode(info.name) != b"\n" or "a".encode(info.name) != b"a":
        raise ConfigError(f"{where}.encoding: {src.encoding!r} is not ASCII-compatible (lines are cut at the byte "
                          "\\n): UTF-16/32 files are not supported")
    if src.key is not None and src.key_regex is not None:
        raise ConfigError(f"{where}: give key or key_regex, not both")
    # Patterns run on the raw bytes when that means the same as on the text: the file's ASCII
    # bytes are ASCII characters (UTF-8, single-byte encodings) and the patterns are ASCII.
    patterns = [p for p in (src.multiline_start, src.key_regex) if p is not None]
    src.fast = _ascii_safe(src.encoding) and all(p.isascii() for p in patterns)
    if src.file_regex is not None:
        try:
            src.file_rx = re.compile(src.file_regex)
        except re.error as e:
            raise ConfigError(f"{where}.file_regex: bad regex {src.file_regex!r}: {e}") from None
    if src.multiline_start is not None:
        src.start_rx = _compile(f"{where}.multiline_start", src.multiline_start, src, src.fast)
        if src.start_rx.match(b"" if src.fast else ""):
            raise ConfigError(f"{where}.multiline_start: {src.multiline_start!r} matches an empty line, so every "
                              "line would start a record")
    if src.key_regex is not None:
        src.key_rx = _compile(f"{where}.key_regex", src.key_regex, src, src.fast)
        if src.key_rx.groups < 1:
            raise ConfigError(f"{where}.key_regex: {src.key_regex!r} needs a group: the key is group 'key' or group 1")
    if src.key is not None:
        try:
            src.key_bytes = src.key.encode(src.encoding)
        except UnicodeEncodeError as e:
            raise ConfigError(f"{where}.key: cannot be encoded as {src.encoding}: {e}") from None
    return src


def check(agent: Agent) -> Agent:
    if not agent.sources:
        raise ConfigError("no source: give --topic and paths, or [[source]] tables in the config file")
    names = set()
    for i, src in enumerate(agent.sources):
        where = f"source[{i}]" if not src.name else f"source {src.name!r}"
        src.name = src.name or f"{src.topic}#{i}"
        if src.name in names:
            raise ConfigError(f"{where}.name: {src.name!r} is used by two sources")
        names.add(src.name)
        check_source(src, where)
    if agent.read_bytes <= agent.max_record_bytes:
        raise ConfigError(f"read_bytes ({agent.read_bytes}) must be larger than max_record_bytes "
                          f"({agent.max_record_bytes}): a read must hold a whole record and the byte after it")
    if agent.max_inflight_bytes < agent.read_bytes:
        raise ConfigError(f"max_inflight_bytes ({agent.max_inflight_bytes}) must be at least read_bytes ({agent.read_bytes})")
    return agent


def load_dict(path: str) -> dict:
    """The TOML file as a dict (not checked yet); ConfigError when unreadable."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read it: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None


def load(path: str) -> Agent:
    """The agent's settings from a TOML file; ConfigError (one line) when it is wrong."""
    return from_dict(load_dict(path))


def from_dict(doc: dict) -> Agent:
    kwargs = {}
    for k, v in doc.items():
        if k == "source":
            continue
        if k not in AGENT_KEYS:
            raise ConfigError(f"unknown key {k!r} (known: source, {', '.join(AGENT_KEYS)})")
        kwargs[k] = _check_value(k, v, AGENT_KEYS[k])
    raw = doc.get("source", [])
    if isinstance(raw, dict):
        raise ConfigError("source: write [[source]] (an array of tables), not [source]")
    if not isinstance(raw, list):
        raise ConfigError(f"source: expected [[source]] tables, got {raw!r}")
    sources = []
    for i, table in enumerate(raw):
        where = f"source[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table, got {table!r}")
        skw = {}
        for k, v in table.items():
            if k not in SOURCE_KEYS:
                raise ConfigError(f"{where}: unknown key {k!r} (known: {', '.join(SOURCE_KEYS)})")
            skw[k] = _check_value(f"{where}.{k}", v, SOURCE_KEYS[k])
        for req in ("topic", "paths"):
            if req not in skw:
                raise ConfigError(f"{where}: {req} is required")
        sources.append(Source(**skw))
    return check(Agent(sources=sources, **kwargs))


def agent_fields() -> list[str]:
    return [f.name for f in fields(Agent) if f.name != "sources"]


def state_dir(agent: Agent) -> str:
    return os.path.expanduser(agent.state_dir)
