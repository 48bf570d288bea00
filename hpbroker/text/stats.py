"""``stats``: MetaQ's items, in MetaQ's format and in memcached's.

An item is a list of lines; a line is a tuple of fields.  MetaQ
(``S/stats/StatsManager.getStatsInfo``) joins the fields with spaces and
wraps the lines in ``STATS\\r\\n`` ... ``END\\r\\n`` inside a ``result 200``
answer; memcached writes ``STAT name value`` lines and ``END``, which is
what pymemcache's ``Client.stats()`` and memcached monitoring plugins read.
A MetaQ line with more than two fields (``topics``, ``offsets``) becomes
one memcached line per field, named ``first:field`` the way memcached
names ``stats slabs`` lines (``STAT 1:chunk_size 96``):

=============================================  ==================================
MetaQ line                                     memcached lines
=============================================  ==================================
``cmd_put 5``                                  ``STAT cmd_put 5``
``logs partitions 4 message_count 9``          ``STAT logs:partitions 4``,
                                               ``STAT logs:message_count 9``
``logs part 0 min_offset 0 max_offset 99``     ``STAT logs:0:min_offset 0``,
                                               ``STAT logs:0:max_offset 99``
``logs *Empty*``                               ``STAT logs *Empty*``
=============================================  ==================================

Which format answers: a ``stats`` line with an opaque (MetaQ's clients
always send one) gets MetaQ's; one without (``stats``, ``stats topics``:
what memcached tools send) gets memcached's.  docs/protocol-text.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ITEMS = ("", "topics", "offsets", "realtime", "groups", "config", "reset", "help", "<topic>")
HELP = [
    ("(empty)", "pid broker_id port uptime version slave curr_connections threads cmd_put cmd_get cmd_offset "
                "tx_begin tx_xa_begin tx_commit tx_rollback get_miss put_failed total_messages topics "
                "config_checksum, then hpbroker's own"),
    ("topics", "one line per topic: partitions message_count message_bytes accept_publish accept_subscribe"),
    ("offsets", "one line per partition: min_offset max_offset (MetaQ byte offsets)"),
    ("realtime", "realtime_put/get/offset/get_miss/put_failed/message_size over the last 30 minutes"),
    ("groups", "one line per consumer group: state members lag"),
    ("<topic>", "resultCode partitions message_count bytes topic_realtime_*"),
    ("config", "the broker's effective configuration (TOML)"),
    ("reset", "restart the realtime counters"),
    ("help", "this list"),
]

REALTIME_PERIOD_S = 30 * 60  # MetaQ's RealTimeStatRestTask


def metaq_body(lines) -> bytes:
    return b"STATS\r\n" + b"".join(" ".join(str(f) for f in line).encode() + b"\r\n" for line in lines) + b"END\r\n"


def memcached_body(lines) -> bytes:
    out = []
    for line in lines:
        fields = [str(f) for f in line]
        if len(fields) == 2 or len(fields) == 1:
            out.append("STAT " + " ".join(fields))
        elif len(fields) >= 5 and fields[1] == "part":  # offsets: topic part p k v k v
            name = f"{fields[0]}:{fields[2]}"
            out += [f"STAT {name}:{fields[i]} {fields[i + 1]}" for i in range(3, len(fields) - 1, 2)]
        else:  # name k v k v ...
            out += [f"STAT {fields[0]}:{fields[i]} {fields[i + 1]}" for i in range(1, len(fields) - 1, 2)]
    return ("\r\n".join(out) + ("\r\n" if out else "") + "END\r\n").encode()


@dataclass
class Realtime:
    """MetaQ's realtime counters (``MetaStatLog``): a count and a summed value
    each, per name and per topic, since the last reset."""

    clock: object = time.monotonic
    since: float = 0.0
    counts: dict = field(default_factory=dict)  # (name, topic or "") -> [count, value]

    def __post_init__(self):
        self.since = self.clock()

    def add(self, name: str, topic: str, count: int, value: int) -> None:
        self._maybe_reset()
        for key in ((name, ""), (name, topic)):
            c = self.counts.get(key)
            if c is None:
                self.counts[key] = [count, value]
            else:
                c[0] += count
                c[1] += value

    def _maybe_reset(self) -> None:
        if self.clock() - self.since >= REALTIME_PERIOD_S:
            self.reset()

    def reset(self) -> None:
        self.counts.clear()
        self.since = self.clock()

    def line(self, name: str, topic: str = "") -> str:
        """``Count=%s,Value=%s,Value/Count=%s,Count/Duration=%s,Duration=%d`` (MetaStatLog.OUTPUT_FORMAT)."""
        self._maybe_reset()
        count, value = self.counts.get((name, topic), (0, 0))
        duration = max(int(self.clock() - self.since), 1)
        per = value // count if count else 0
        return f"Count={count},Value={value},Value/Count={per},Count/Duration={count // duration},Duration={duration}"


REALTIME_NAMES = ("put", "get", "offset", "get_miss", "put_failed", "message_size")


def realtime_lines(rt: Realtime, topic: str = "") -> list[tuple]:
    prefix = "topic_realtime_" if topic else "realtime_"
    return [(prefix + n, rt.line(n, topic)) for n in REALTIME_NAMES]
