"""What a consumer's recovery journal file is: its name and its frames.

The store itself, its opening, replay and compaction, is
:class:`~hpbroker.client.recovery_journal.RecoveryJournal`; this module is the
bytes it writes and reads back: :class:`Entry`, the tagged records around it,
:func:`frame` and the decoder, and :func:`journal_filename`.

File layout
-----------

``<directory>/<name>.journal`` is a sequence of frames (the frame, its scan
and the lock are :mod:`hpbroker.client.framing`'s, shared with the
producer's spill journal), all integers little-endian:

=======  ========  ============  ==========================================
offset   size      field         notes
=======  ========  ============  ==========================================
0        4         length        uint32, payload bytes, 1 .. ``MAX_FRAME``
4        4         crc           uint32, CRC32C of bytes [0, 4) (the length)
                                 and then the payload
8        length    payload       msgpack map of one tagged record (below)
=======  ========  ============  ==========================================

and the next frame starts right after the payload.  A payload is one of
(``t`` is the tag):

* ``{"t": "add", "id": int, "entry": {...}}``: an :class:`Entry`, as a map
  of its fields;
* ``{"t": "done", "id": int}``: the entry was redelivered, it is gone;
* ``{"t": "attempt", "id": int, "attempts": int, "error": str,
  "failed_at": float}``: a redelivery failed; the entry's three fields take
  these values;
* ``{"t": "start", "next_id": int}``: the first frame of a compacted file,
  so that ids are never reused after their entries are compacted away.
"""

from __future__ import annotations

import re
import time
from typing import Union

import msgspec
from crc32c import crc32c

from hpbroker.client import framing


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One message a handler kept failing on."""

    topic: str
    partition: int
    offset: int
    key: Union[bytes, None]
    value: bytes
    headers: list[tuple[str, bytes]] = []
    timestamp: int  # the record's timestamp, ms since the epoch
    error: str  # the last failure, as text
    attempts: int = 1  # deliveries that failed so far
    failed_at: float = msgspec.field(default_factory=time.time)  # the last failure, epoch seconds


class _Add(msgspec.Struct, tag="add", tag_field="t", frozen=True):
    id: int
    entry: Entry


class _Done(msgspec.Struct, tag="done", tag_field="t", frozen=True):
    id: int


class _Attempt(msgspec.Struct, tag="attempt", tag_field="t", frozen=True):
    id: int
    attempts: int
    error: str
    failed_at: float


class _Start(msgspec.Struct, tag="start", tag_field="t", frozen=True):
    next_id: int


_Record = Union[_Add, _Done, _Attempt, _Start]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Record)


def journal_filename(name: str) -> str:
    """``name`` ("<topic>@<group>") as a file name: letters, digits and
    ``. _ - @`` are kept, anything else becomes ``_``, and when anything
    was changed a CRC of the original name is added so two names cannot
    share a file."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a journal name must be a non-empty str, got {name!r}")
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", name)[:180]
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe != name:
        safe += f"~{crc32c(name.encode('utf-8', 'surrogatepass')):08x}"
    return safe


def frame(record) -> bytes:
    """One frame holding ``record`` (see the module's table)."""
    return framing.frame(_encoder.encode(record))
