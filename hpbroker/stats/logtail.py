"""The last log lines of each broker process, kept in its stats slot.

:class:`SlotLogHandler` is a ``logging.Handler`` on the ``hpbroker``
logger of a broker process: each record it takes is one line in the slot's
log ring (layout: :mod:`hpbroker.stats.layout`, ``LOG_AT``), written in
place and then counted, so a reader that reads the count before and after
copying the lines knows which of them were overwritten meanwhile.  A
handler is called under its own lock, so one process's threads never write
the ring at the same time.  Log lines are rare (start, stop, errors): this
is never on a per-message path.
"""

from __future__ import annotations

import logging
import struct

from hpbroker.stats import layout as L

_TS = struct.Struct("<qB")


class SlotLogHandler(logging.Handler):
    def __init__(self, words: memoryview, level: int = logging.INFO):
        super().__init__(level)
        self.w = words
        self.bytes = words.cast("B")  # the same memory, addressed by byte
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record).encode("utf-8", "replace")[: L.LOG_TEXT_BYTES]
            seq = self.w[L.LOG_AT]
            at = (L.LOG_AT + 1) * 8 + (seq % L.LOG_LINES) * L.LOG_LINE_BYTES
            line = _TS.pack(int(record.created * 1e9), min(255, record.levelno // 10)) + text
            self.bytes[at: at + L.LOG_LINE_BYTES] = line.ljust(L.LOG_LINE_BYTES, b"\0")
            self.w[L.LOG_AT] = seq + 1
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def read_lines(words) -> list[tuple[int, int, str]]:
    """(time ns, level, text) of the lines in a slot's ring, oldest first
    (``words``: the slot as int64 words, a numpy array or a memoryview)."""
    raw = memoryview(words).cast("B") if isinstance(words, memoryview) else words.view("u1")
    seq1 = int(words[L.LOG_AT])
    start = (L.LOG_AT + 1) * 8
    lines = bytes(raw[start: start + L.LOG_LINES * L.LOG_LINE_BYTES])
    seq2 = int(words[L.LOG_AT])
    first = max(0, seq1 - L.LOG_LINES, seq2 - L.LOG_LINES + 1 if seq2 != seq1 else 0)
    out = []
    for s in range(first, seq1):
        at = (s % L.LOG_LINES) * L.LOG_LINE_BYTES
        ts, level = _TS.unpack_from(lines, at)
        text = lines[at + _TS.size: at + L.LOG_LINE_BYTES].rstrip(b"\0").decode("utf-8", "replace")
        out.append((ts, level * 10, text))
    return out
