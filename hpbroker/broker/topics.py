"""The topic registry: name -> partition count, kept in ``topics.json``.

Only the supervisor writes it, as temp file, fsync, rename, fsync of the
directory (:meth:`FileSystem.write_atomic`), so a crash leaves either the
old or the new file.  A failed write raises ``OSError`` and registers
nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hpbroker.io.fs import FileSystem

TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class TopicError(ValueError):
    pass


def check_name(name: str) -> None:
    if not TOPIC_RE.match(name) or name in (".", ".."):
        raise TopicError(f"invalid topic name {name!r}: use 1-249 of [A-Za-z0-9._-]")


class TopicRegistry:
    def __init__(self, data_dir: Path, fs: FileSystem | None = None):
        self.path = Path(data_dir) / "topics.json"
        self.fs = fs or FileSystem()
        self.topics: dict[str, int] = {}
        if self.path.exists():
            try:
                self.topics = {str(k): int(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError) as e:
                raise TopicError(f"{self.path} is not a valid topic registry: {e}") from None

    def create(self, name: str, partitions: int) -> None:
        check_name(name)
        if partitions < 1:
            raise TopicError(f"a topic needs at least one partition, not {partitions}")
        topics = {**self.topics, name: partitions}
        self.fs.write_atomic(self.path, json.dumps(topics, indent=1, sort_keys=True).encode())
        self.topics = topics

