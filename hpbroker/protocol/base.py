"""What every wire message shares: the tagged base Structs and the field types.

(:mod:`hpbroker.protocol.messages` re-exports all of it; the request and
reply families are split over modules so that none grows past one job.)
"""

from __future__ import annotations

from typing import Annotated

import msgspec

PROTOCOL_VERSION = 1

M = msgspec.Meta

#: A topic name: also a directory name on the broker, hence the strict pattern.
TopicName = Annotated[str, M(min_length=1, max_length=249, pattern=r"^(?!\.\.?$)[A-Za-z0-9._-]+$")]
Partition = Annotated[int, M(ge=0, le=0x7FFFFFFF)]
Acks = Annotated[int, M(ge=-1, le=1)]
TimeoutMs = Annotated[int, M(ge=0, le=1 << 31)]

#: Fetch/ListOffsets ``spec`` values.
EARLIEST = -2
LATEST = -1

#: ProduceMessages ``partition`` meaning "broker picks".
ANY_PARTITION = -1


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", tag=True):
    v: int = PROTOCOL_VERSION


class _Request(_Message):
    id: int


class _Reply(_Message):
    id: int
    code: int = 0
    message: str = ""
