"""The topic registry: name -> partition count, kept in ``topics.json``.

Only the supervisor writes it, as temp file, fsync, rename, fsync of the
directory, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class TopicError(ValueError):
    pass


def check_name(name: str) -> None:
    if not TOPIC_RE.match(name) or name in (".", ".."):
        raise TopicError(f"invalid topic name {name!r}: use 1-249 of [A-Za-z0-9._-]")


class TopicRegistry:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "topics.json"
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
        self.topics[name] = partitions
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        data = json.dumps(self.topics, indent=1, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
