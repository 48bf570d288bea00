"""The text port's ``stats``: gather each item's values, render them
(:mod:`.stats`), answer.

Counters of the text listener itself (connections, puts, gets...) live in
this process; broker-wide values come from the broker over the ordinary
protocol: ``Stats`` (role, messages, replication lag, groups),
``Metadata``, ``ListOffsets``, ``ListGroups``/``DescribeGroup``; ring
occupancy is read from the rings' shared-memory headers, read-only, as
``hpbroker ring stat`` does; a topic's bytes are its segment files' sizes.
"""

from __future__ import annotations

import os
import threading
import time
import zlib

from hpbroker import config as config_mod
from hpbroker.protocol import messages as m
from hpbroker.text import replies as R
from hpbroker.text import stats as S
from hpbroker.text.connection import Slot
from hpbroker.text.offsets import PENDING
from hpbroker.text.service import VERSION


class _Gather:
    """Count outstanding requests; call ``done`` when the last one is answered."""

    def __init__(self, done):
        self.left = 0
        self.done = done
        self.started = False

    def add(self) -> None:
        self.left += 1

    def one(self) -> None:
        self.left -= 1
        if self.left == 0 and self.started:
            self.done()

    def start(self) -> None:
        self.started = True
        if self.left == 0:
            self.done()


def _clean(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace(" ", ",").replace("\r", "").replace("\n", "") or "-"


class StatsService:
    def __init__(self, service, cfg: config_mod.Config, listener, instance: str):
        self.svc = service
        self.cfg = cfg
        self.link = service.link
        self.listener = listener  # .curr_connections, .total_connections, .bytes_read, .bytes_written, .port
        self.instance = instance
        self.started = time.monotonic()
        self.config_checksum = zlib.crc32(config_mod.dumps(cfg)) & 0x7FFFFFFF

    def handle(self, conn, ev) -> None:
        slot = conn.add(Slot(1))
        item = ev.item.strip()
        metaq = ev.opaque is not None

        def finish(lines) -> None:
            body = S.metaq_body(lines) if metaq else S.memcached_body(lines)
            slot.fill(0, R.result(R.OK, ev.opaque, body) if metaq else body)
            self.svc.touched.add(conn)

        if item == "help":
            finish([(name, what.replace(" ", "_")) for name, what in S.HELP])
        elif item == "reset":
            self.svc.realtime.reset()
            if metaq:
                finish([])
            else:
                slot.fill(0, b"RESET\r\n")
                self.svc.touched.add(conn)
        elif item == "config":
            self._config(slot, conn, ev, metaq)
        elif item == "realtime":
            finish(S.realtime_lines(self.svc.realtime))
        elif item == "":
            self._general(finish)
        elif item == "topics":
            self._topics(finish, None)
        elif item == "offsets":
            self._offsets(finish)
        elif item == "groups":
            self._groups(finish)
        else:
            self._topics(finish, item)

    # -- items -------------------------------------------------------------------------

    def _config(self, slot, conn, ev, metaq: bool) -> None:
        if metaq:  # MetaQ streams its server.ini as the whole answer, without STATS/END
            import tomli_w

            text = tomli_w.dumps(_plain(config_mod.dumps(self.cfg))).encode()
            slot.fill(0, R.result(R.OK, ev.opaque, text))
        else:
            lines = [(key, _clean(getattr(getattr(self.cfg, key.split(".")[0]), key.split(".")[1])))
                     for key, *_ in config_mod.describe()]
            slot.fill(0, S.memcached_body(lines))
        self.svc.touched.add(conn)

    def _general(self, finish) -> None:
        lst = self.listener
        c = lst.counters()  # every text listener process's, added up
        role = {}

        def lines():
            b = role.get("stats", {})
            out = [
                ("pid", os.getppid()),
                ("broker_id", self.cfg.broker.broker_id),
                ("port", lst.port),
                ("uptime", int(time.monotonic() - self.started)),
                ("version", VERSION.decode()),
                ("slave", _clean(b.get("role") == "slave")),
                ("curr_connections", c["curr_connections"]),
                ("threads", threading.active_count()),
                ("cmd_put", c["cmd_put"]),
                ("cmd_get", c["cmd_get"]),
                ("cmd_offset", c["cmd_offset"]),
                ("tx_begin", c["tx_begin"]),
                ("tx_xa_begin", c["tx_xa_begin"]),
                ("tx_commit", c["tx_commit"]),
                ("tx_rollback", c["tx_rollback"]),
                ("get_miss", c["get_miss"]),
                ("put_failed", c["put_failed"]),
                ("total_messages", b.get("messages", 0)),
                ("topics", b.get("topics", 0)),
                ("config_checksum", self.config_checksum),
                # hpbroker's own, from here on
                ("text_listener_pid", os.getpid()),
                ("text_listeners", lst.lanes),
                ("total_connections", c["total_connections"]),
                ("bytes_read", c["bytes_read"]),
                ("bytes_written", c["bytes_written"]),
                ("bad_commands", c["bad_commands"]),
                ("put_requests", c["put_requests"]),
                ("put_batches", c["put_batches"]),
                ("put_acked", c["put_acked"]),
                ("put_batch_messages_avg", round(c["put_acked"] / c["put_batches"], 1) if c["put_batches"] else 0),
                ("put_runs", c["put_runs"]),  # puts of one connection read together and answered with one join
                ("put_ack_latency_us_avg", c["put_ack_us_sum"] // c["put_batches"] if c["put_batches"] else 0),
                ("get_messages", c["get_messages"]),
                ("get_bytes", c["get_bytes"]),
            ]
            out += self._rings()
            if "error" in role:
                out.append(("broker_stats_error", _clean(role["error"])))
            out += [(f"broker_{k}", _clean(v)) for k, v in sorted(b.items())]
            return out

        def got(rep, payloads):
            if rep.code:
                role["error"] = rep.message or f"code {rep.code}"
            else:
                role["stats"] = rep.stats
            finish(lines())

        self.link.request(lambda i: m.Stats(id=i), got, 10.0)

    def _rings(self) -> list[tuple]:
        from hpbroker.ring import list_segments

        out = []
        for info in list_segments(self.instance, include_unlinked=True):  # names unlinked while serving
            if not info.get("valid") or "capacity" not in info:
                continue
            cap = info["capacity"]
            fill = max(0, min(info["tail"] - info["head"], cap))
            out.append((f"ring_{info['ring']}_fill_bytes", fill))
            out.append((f"ring_{info['ring']}_fill_pct", round(100.0 * fill / cap, 2)))
        return out

    def _with_topics(self, then) -> None:
        def got(rep, payloads):
            topics = {t.name: len(t.partitions) for t in rep.topics if t.code == 0} if not rep.code else {}
            self.svc.partitions.update(topics)
            then(topics)

        self.link.request(lambda i: m.Metadata(id=i, topics=None), got, 10.0)

    def _watermarks(self, topics: dict, then) -> None:
        """then({(topic, p): (earliest, latest)}) from ListOffsets."""
        marks: dict = {}
        g = _Gather(lambda: then(marks))
        for topic, n in topics.items():
            for p in range(n):
                for spec in (m.EARLIEST, m.LATEST):
                    g.add()

                    def got(rep, payloads, key=(topic, p), spec=spec):
                        lo, hi = marks.get(key, (0, 0))
                        v = rep.offset if not rep.code else 0
                        marks[key] = (v, hi) if spec == m.EARLIEST else (lo, v)
                        g.one()

                    self.link.request(lambda i, t=topic, p=p, s=spec: m.ListOffsets(id=i, topic=t, partition=p, spec=s),
                                      got, 10.0, partition=p)
        g.start()

    def _topic_bytes(self, topic: str, n: int) -> int:
        from hpbroker.io import layout

        total = 0
        for p in range(n):
            d = layout.partition_dir(self.cfg.broker.data_dir, topic, p)
            for base in layout.list_segments(d):
                try:
                    total += os.stat(layout.log_path(d, base)).st_size
                except FileNotFoundError:
                    pass
        return total

    def _topics(self, finish, only: str | None) -> None:
        def with_topics(topics):
            if only is not None:
                if only not in topics:
                    finish([(only,), ("resultCode", 1), ("partitions", 0), ("message_count", 0), ("bytes", 0),
                            *S.realtime_lines(self.svc.realtime, only)])
                    return
                topics = {only: topics[only]}

            def with_marks(marks):
                lines = []
                for topic, n in sorted(topics.items()):
                    count = sum(hi - lo for (t, _), (lo, hi) in marks.items() if t == topic)
                    size = self._topic_bytes(topic, n)
                    if only is not None:
                        lines = [(topic,), ("resultCode", 0 if count else 2), ("partitions", n), ("message_count", count),
                                 ("bytes", size), *S.realtime_lines(self.svc.realtime, topic)]
                    elif count == 0 and size == 0:
                        lines.append((topic, "*Empty*"))
                    else:
                        lines.append((topic, "partitions", n, "message_count", count, "message_bytes", size,
                                      "accept_publish", "true", "accept_subscribe", "true"))
                finish(lines)

            self._watermarks(topics, with_marks)

        self._with_topics(with_topics)

    def _offsets(self, finish) -> None:
        def with_topics(topics):
            def with_marks(marks):
                keys = sorted(marks)
                lines: dict = {}

                def attempt() -> bool:
                    for key in keys:
                        if key in lines:
                            continue
                        b = self.svc.view(*key).bounds(marks[key][1], self.svc.scan_budget)
                        if b is PENDING:
                            return False
                        lines[key] = (key[0], "part", key[1], "min_offset", b[0], "max_offset", b[1])
                    finish([lines[k] for k in keys])
                    return True

                if not attempt():
                    self.svc.defer(attempt, lambda: finish([("error", "the_log_could_not_be_read_in_time")]))

            self._watermarks(topics, with_marks)

        self._with_topics(with_topics)

    def _groups(self, finish) -> None:
        lines: list = []
        g = _Gather(lambda: finish(sorted(lines)))
        for a in range(len(self.link.socks)):
            g.add()

            def listed(rep, payloads, a=a):
                for gl in ([] if rep.code else rep.groups):
                    g.add()

                    def described(rep2, payloads2, gl=gl):
                        lag = sum(p.lag for p in rep2.partitions) if not rep2.code else -1
                        lines.append((gl.group, "state", gl.state, "members", gl.members, "lag", lag))
                        g.one()

                    self.link.request(lambda i, name=gl.group: m.DescribeGroup(id=i, group=name), described, 10.0,
                                      partition=a)
                g.one()

            self.link.request(lambda i: m.ListGroups(id=i), listed, 10.0, partition=a)
        g.start()


def _plain(cfg_bytes: bytes) -> dict:
    import msgspec

    return msgspec.msgpack.decode(cfg_bytes)
