"""A consumer-group member process for the tests (tests/test_groups_e2e.py).

    python tests/group_worker.py URL TOPIC GROUP OUT [--session-ms N] [--manual-commit]

Appends one line ``partition offset`` per processed message to OUT with one
unbuffered write per polled batch (so a kill -9 loses nothing that was
reported processed), and prints JSON events on stdout: ``assigned`` (with
each new partition's starting position), ``revoked``, ``lost``,
``commit_error``, ``closed``.  SIGTERM: stop, commit, leave the group.
With ``--manual-commit`` auto-commit is off and the worker commits after
every poll, explicitly naming the partitions it processed, even if it has
lost them meanwhile (how a paused process that wakes up behaves).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from hpbroker.client import BrokerError, Consumer


def say(event: str, **kw) -> None:
    # one write for the line and its newline: stderr (the client's log) goes to the same pipe, and with
    # PYTHONUNBUFFERED print() writes the newline separately, so a log line could land inside the event's
    sys.stdout.write(json.dumps({"event": event, "pid": os.getpid(), **kw}) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("topic")
    ap.add_argument("group")
    ap.add_argument("out")
    ap.add_argument("--session-ms", type=int, default=10_000)
    ap.add_argument("--commit-ms", type=int, default=500)
    ap.add_argument("--manual-commit", action="store_true")
    a = ap.parse_args()
    stop = []
    woke = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGCONT, lambda *_: woke.append(1))
    box: list[Consumer] = []

    def assigned(tps):
        c = box[0]
        say("assigned", partitions=sorted([tp.partition, c.position(tp)] for tp in tps))

    c = Consumer(a.url, a.topic, group_id=a.group, auto_offset_reset="earliest", session_timeout_ms=a.session_ms,
                 enable_auto_commit=not a.manual_commit, auto_commit_interval_ms=a.commit_ms, fetch_max_wait_ms=100,
                 on_assign=assigned, on_revoke=lambda tps: say("revoked", partitions=sorted(tp.partition for tp in tps)),
                 on_lost=lambda tps: say("lost", partitions=sorted(tp.partition for tp in tps)))
    box.append(c)
    fd = os.open(a.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    say("started")
    done: dict[int, int] = {}  # partition -> the offset after the last one processed
    try:
        while not stop:
            if woke and a.manual_commit:  # woken after a pause: commit what was processed before it
                woke.clear()
                try:
                    c.commit(dict(done))
                    say("commit_ok", partitions=sorted(done))
                except BrokerError as e:
                    say("commit_error", code=int(e.code), message=e.message, partitions=sorted(done))
            msgs = c.poll(200, max_records=2000)
            if not msgs:
                continue
            for m in msgs:
                done[m.partition] = m.offset + 1
            os.write(fd, "".join(f"{m.partition} {m.offset}\n" for m in msgs).encode())
            if a.manual_commit:
                last = {m.partition: m.offset + 1 for m in msgs}
                try:
                    c.commit(last)
                except BrokerError as e:
                    say("commit_error", code=int(e.code), message=e.message, partitions=sorted(last))
    finally:
        c.close()
        os.close(fd)
        say("closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
