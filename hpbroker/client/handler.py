"""``Consumer.run``: the handler loop, its retries, and where failed messages go.

MetaQ consumers register a listener and the client drives it; a message the
listener keeps failing on goes to a recovery store instead of blocking its
partition or vanishing.  Here:

* each message (or each polled list, with ``batch=True``) is handed to the
  handler; an exception is retried ``max_retries`` times, with exponential
  backoff from ``retry_backoff_ms`` (capped at 5 s);
* then the message goes to the ``on_failure`` policy:

  ==========  ==============================================================
  ``dlq``     produced with acks=all to ``<topic>.<group>.dlq`` (the broker's
              dead-letter topic), key and headers kept, plus headers
              ``hpbroker.dlq.{topic,partition,offset,timestamp,group,error,
              attempts}``; ``hpbroker dlq replay`` re-publishes them
  ``local``   a durable journal on this machine (MetaQ's local recovery,
              :mod:`hpbroker.client.recovery_journal`), redelivered to the
              handler every ``recover_interval_ms`` (the first time 5 s after
              the start), across restarts of the consumer
  ``drop``    logged and counted
  ==========  ==============================================================

* the loop moves on only once the message is safely in the DLQ (acked) or
  the journal (fdatasync'd), so the offsets auto-commit stores never pass
  a failed message that is not kept somewhere;
* :meth:`Consumer.stop` (any thread, or SIGTERM in the console tool) ends
  the loop after the message in hand; the partitions are rewound to the
  first message not handled, so nothing polled but unhandled is committed.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from hpbroker.client.records import Message

log = logging.getLogger("hpbroker.consumer")

POLICIES = ("dlq", "local", "drop")
#: header names a dead letter carries (besides the original headers)
DLQ_PREFIX = "hpbroker.dlq."


def dlq_topic(topic: str, group: str | None) -> str:
    return f"{topic}.{group}.dlq" if group else f"{topic}.dlq"


class HandlerLoop:
    def __init__(self, consumer, handler: Callable, *, batch: bool, max_retries: int, on_failure: str,
                 retry_backoff_ms: int, recover_interval_ms: int, recover_dir: str | None, poll_timeout_ms: int,
                 sleep=time.sleep, clock=time.monotonic):
        if on_failure not in POLICIES:
            raise ValueError(f"on_failure must be one of {', '.join(POLICIES)}, not {on_failure!r}")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.c = consumer
        self.handler = handler
        self.batch = batch
        self.max_retries = max_retries
        self.on_failure = on_failure
        self.backoff = retry_backoff_ms / 1000.0
        self.recover_interval = recover_interval_ms / 1000.0
        self.poll_timeout_ms = poll_timeout_ms
        self.sleep = sleep
        self.clock = clock
        self.counts = {"handled": 0, "retries": 0, "dead_lettered": 0, "journalled": 0, "dropped": 0,
                       "recovered": 0, "recovery_failures": 0}
        self._producer = None
        self._journals: dict[str, object] = {}
        self._recover_dir = recover_dir
        self._next_recovery = clock() + min(5.0, self.recover_interval)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> dict:
        try:
            if self.on_failure == "local":
                self._open_local_journals()
            while not self.c.stopping:
                msgs = self.c.poll(timeout_ms=self.poll_timeout_ms)
                if msgs:
                    self._handle(msgs)
                if self._journals and self.clock() >= self._next_recovery:
                    self._redeliver()
        finally:
            if self._producer is not None:
                self._producer.close()
            for j in self._journals.values():
                j.close()
        return dict(self.counts)

    def _handle(self, msgs: list[Message]) -> None:
        if self.batch:
            if not self._attempt(msgs):
                self._rewind(msgs)
            return
        for i, msg in enumerate(msgs):
            if self.c.stopping or not self._attempt(msg):
                self._rewind(msgs[i:])
                return

    def _attempt(self, work) -> bool:
        """Run the handler with retries; False when stopped before the work
        was either handled or safely parked (the caller rewinds)."""
        error = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.counts["retries"] += 1
                if not self._pause(min(5.0, self.backoff * (2 ** (attempt - 1)))):
                    return False
            try:
                self.handler(work)
            except Exception as e:  # the handler's failure is data here
                error = e
                continue
            self.counts["handled"] += len(work) if self.batch else 1
            return True
        for msg in (work if self.batch else [work]):
            self._fail(msg, error, self.max_retries + 1)
        return True

    def _pause(self, seconds: float) -> bool:
        end = self.clock() + seconds
        while not self.c.stopping:
            left = end - self.clock()
            if left <= 0:
                return True
            self.sleep(min(left, 0.1))
        return False

    def _rewind(self, unhandled: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for msg in unhandled:
            key = (msg.topic, msg.partition)
            first[key] = min(first.get(key, msg.offset), msg.offset)
        for tp, offset in first.items():
            try:
                self.c.seek(tp, offset)
            except Exception:  # moved to another member meanwhile: its owner reads it
                pass

    # -- failure policies ------------------------------------------------------------------

    def _fail(self, msg: Message, error: Exception, attempts: int) -> None:
        why = f"{type(error).__name__}: {error}"
        if self.on_failure == "dlq":
            self._dead_letter(msg, why, attempts)
            self.counts["dead_lettered"] += 1
        elif self.on_failure == "local":
            self._journal(msg.topic).add(_entry(msg, why, attempts))
            self.counts["journalled"] += 1
        else:
            log.warning("dropped %s/%d@%d after %d attempts: %s", msg.topic, msg.partition, msg.offset, attempts, why)
            self.counts["dropped"] += 1

    def _dead_letter(self, msg: Message, why: str, attempts: int) -> None:
        if self._producer is None:
            from hpbroker.client.producer import Producer

            self._producer = Producer(self.c.bootstrap, acks="all", linger_ms=0)
        headers = list(msg.headers or []) + [
            (DLQ_PREFIX + "topic", msg.topic.encode()),
            (DLQ_PREFIX + "partition", str(msg.partition).encode()),
            (DLQ_PREFIX + "offset", str(msg.offset).encode()),
            (DLQ_PREFIX + "timestamp", str(msg.timestamp).encode()),
            (DLQ_PREFIX + "group", (self.c.group_id or "").encode()),
            (DLQ_PREFIX + "error", why.encode()[:4096]),
            (DLQ_PREFIX + "attempts", str(attempts).encode()),
        ]
        fut = self._producer.send(dlq_topic(msg.topic, self.c.group_id), msg.value, key=msg.key, headers=headers)
        fut.get(timeout=self.c.request_timeout_ms / 1000.0 + 5)  # raises: the loop stops, the offset stays

    # -- local recovery --------------------------------------------------------------------

    def _journal(self, topic: str):
        j = self._journals.get(topic)
        if j is None:
            from hpbroker.client.recovery_journal import RecoveryJournal

            j = RecoveryJournal(self._recover_dir, f"{topic}@{self.c.group_id or 'nogroup'}")
            self._journals[topic] = j
        return j

    def _open_local_journals(self) -> None:
        """Open every topic's journal now, so what an earlier run left is redelivered."""
        for topic in self.c.topics:
            self._journal(topic)

    def _redeliver(self) -> None:
        self._next_recovery = self.clock() + self.recover_interval
        for j in self._journals.values():
            for entry_id, e in j.pending():
                if self.c.stopping:
                    return
                msg = Message(e.topic, e.partition, e.offset, e.key, e.value, e.timestamp, list(e.headers) or None)
                try:
                    self.handler([msg] if self.batch else msg)
                except Exception as err:
                    j.retry_failed(entry_id, f"{type(err).__name__}: {err}")
                    self.counts["recovery_failures"] += 1
                else:
                    j.done(entry_id)
                    self.counts["recovered"] += 1


def _entry(msg: Message, why: str, attempts: int):
    from hpbroker.client.recovery_journal import Entry

    return Entry(topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key, value=msg.value,
                        headers=list(msg.headers or []), timestamp=msg.timestamp, error=why, attempts=attempts,
                        failed_at=time.time())
