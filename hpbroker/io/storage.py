"""Storage: the partition logs under one data directory (``<data_dir>/<topic>-<partition>``).

Opening a partition runs its recovery.  Owned by one writer process; not
thread-safe.  Retention is applied with :meth:`Storage.apply_retention`
(the writer calls it every ``retention_check_ms``).

One background thread (``hpbroker-storage``) takes the slow file work off
the caller's thread, first in first out: a roll's index rewrite and
checkpoint (four fsyncs), and retention's unlinks and archiving.  Whatever
would race with it (truncation, close) waits for it first.

Files that retention renamed (``.deleted``, or ``.archiving`` under the
archive policy) wait ``delete_delay_ms`` before they go to that thread (:meth:`Storage.remove_due`, which the writer
calls about once a second): a reader that opened the segment just before
keeps reading it, and the removal cuts the file down in steps
(:func:`hpbroker.io.retention.remove_gradually`).  ``close()`` removes
whatever is still waiting.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

import msgspec

from hpbroker.io.config import LogConfig
from hpbroker.io import layout
from hpbroker.io.fs import DIR_MODE, FileSystem
from hpbroker.io.iothread import IOThread
from hpbroker.io.log import PartitionLog
from hpbroker.io.retention import apply_retention, finish_archiving, remover

#: the transaction journal's topic (hpbroker.tx.journal.TOPIC; io imports no tx)
TX_JOURNAL = "__transactions"
#: in each journal partition's directory: ``{"from": offset}``, below which no
#: live transaction has records (written by its coordinator, net.tx_upkeep)
TX_CHECKPOINT = "tx.checkpoint"

log = logging.getLogger("hpbroker.io")


def _logged(fn, args) -> None:
    """Run a background job; what it did not handle itself is logged, not
    left unseen on a Job nobody waits for."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        log.exception("background storage job %s failed", getattr(fn, "__name__", fn))


def _remove_all(remove, paths: list[str]) -> None:
    for p in paths:
        try:
            remove(p)
        except FileNotFoundError:
            pass
        except OSError as e:  # recovery unlinks it at the next start
            log.warning("could not unlink %s: %s", p, e)


class Storage:
    def __init__(self, data_dir: str, log_config: LogConfig | None = None, clock=time.time, fs: FileSystem | None = None):
        self.data_dir = str(data_dir)
        self.config = log_config or LogConfig()
        self._clock = clock
        self._fs = fs or FileSystem()
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._bg: IOThread | None = None  # see the module docstring
        self._remove = remover(self._fs, self.config)  # a big file goes in cuts (retention.remove_gradually)
        self._delayed: deque[tuple] = deque()  # (due ms, fn, args): retention's work waiting for delete_delay_ms
        os.makedirs(self.data_dir, mode=DIR_MODE, exist_ok=True)

    @property
    def fs(self) -> FileSystem:
        """The syscall layer every file of this data dir is written through."""
        return self._fs

    def partition(self, topic: str, partition: int, create: bool = True) -> PartitionLog:
        """The open log of ``topic``-``partition`` (opened and recovered on first use).
        Raises KeyError when it does not exist and ``create`` is False."""
        key = (topic, int(partition))
        log = self._logs.get(key)
        if log is None:
            d = layout.partition_dir(self.data_dir, topic, partition)
            if not create and not os.path.isdir(d):
                raise KeyError(key)
            log = PartitionLog(d, self.config, clock=self._clock, fs=self._fs, topic=topic, partition=int(partition),
                               background=self._submit)
            self._logs[key] = log
        return log

    def find(self, topic: str, partition: int) -> PartitionLog | None:
        """The open log of ``topic``-``partition``, or None (never opens one)."""
        return self._logs.get((topic, int(partition)))

    def partitions(self) -> list[tuple[str, int]]:
        """Every partition on disk or open, sorted."""
        return sorted(set(layout.list_partitions(self.data_dir)) | set(self._logs))

    def truncate(self, topic: str, partition: int, offset: int) -> PartitionLog:
        """Cut the partition back to ``offset`` (a replica's divergent tail,
        see truncate.py): close it, cut the files, reopen (recovery runs)."""
        from hpbroker.io.truncate import truncate_dir

        key = (topic, int(partition))
        self.wait_background()  # a roll finishing there would write a checkpoint past the cut
        log = self._logs.pop(key, None)
        if log is not None:
            log.close()
        truncate_dir(layout.partition_dir(self.data_dir, topic, partition), offset, self._fs)
        return self.partition(topic, partition)

    def logs(self) -> list[PartitionLog]:
        return list(self._logs.values())

    def check_scrub_findings(self) -> list[PartitionLog]:
        """Fence every open partition the scrubber reported damage in
        (:meth:`PartitionLog.check_scrub_finding`); returns those fenced now.
        One stat per open partition that is not fenced yet."""
        return [lg for lg in self._logs.values() if lg.check_scrub_finding()]

    def apply_retention(self, now_ms: int | None = None) -> dict[tuple[str, int], list[int]]:
        """Run retention on every open partition; returns the deleted segment bases.

        Internal topics (names starting with ``__``: ``__consumer_offsets``)
        are never expired: they hold state, such as committed offsets, that
        must outlive any retention of data.  The transaction journal
        (``__transactions``) is the exception: it expires by age only
        (``retention_ms``, never ``retention_bytes``), and never at or
        above its ``tx.checkpoint``, below which no live transaction has
        records; the coordinator copies long-waiting transactions (a
        prepared XA branch) forward so that the checkpoint moves on
        (hpbroker.net.tx_upkeep)."""
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        due = now + self.config.delete_delay_ms
        delayed = self._delayed

        def delete_later(paths):
            delayed.append((due, _remove_all, (self._remove, paths)))

        def archive_later(path, dest_dir):
            delayed.append((due, finish_archiving, (path, dest_dir, self._fs, self._remove)))

        out = {}
        by_age = None
        for key, log in self._logs.items():
            cfg, keep_from = self.config, None
            if key[0].startswith("__"):
                if key[0] != TX_JOURNAL:
                    continue
                by_age = by_age or msgspec.structs.replace(cfg, retention_bytes=-1)
                cfg, keep_from = by_age, _tx_checkpoint(log.dir)
            deleted = apply_retention(log, cfg, now, delete_later, archive_later, keep_from)
            if deleted:
                out[key] = deleted
        self.remove_due(now)  # what is due, this round's files too when delete_delay_ms is 0
        return out

    def remove_due(self, now_ms: int | None = None, everything: bool = False) -> None:
        """Hand the removals (and archivings) whose ``delete_delay_ms`` has
        passed (``everything``: all of them) to the background thread."""
        d = self._delayed
        if d:
            now = int(self._clock() * 1000) if now_ms is None else now_ms
            while d and (everything or d[0][0] <= now):
                _, fn, args = d.popleft()
                self._submit(fn, *args)

    def _submit(self, fn, *args) -> None:
        if self._bg is None:
            self._bg = IOThread(name="hpbroker-storage")
        self._bg.submit(_logged, fn, args)

    def wait_background(self) -> None:
        """Block until everything submitted to the background thread so far has run."""
        if self._bg is not None:
            self._bg.close()
            self._bg = None

    def close(self) -> None:
        """Close every log (each syncs what it staged) and finish the
        background unlinks; raises the first error after closing all."""
        first = None
        self.remove_due(everything=True)  # a clean stop leaves nothing for recovery to unlink
        self.wait_background()  # a finishing roll's checkpoint must not land after close's own
        for log in self._logs.values():
            try:
                log.close()
            except Exception as e:  # noqa: BLE001 - close the rest, then report
                first = first or e
        self._logs.clear()
        self.wait_background()
        if first is not None:
            raise first

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tx_checkpoint(d: str) -> int:
    """The journal partition's ``tx.checkpoint`` offset (0 without one: a
    journal whose coordinator has not said what it still needs keeps all)."""
    try:
        with open(os.path.join(d, TX_CHECKPOINT), "rb") as f:
            return int(msgspec.json.decode(f.read())["from"])
    except (OSError, ValueError, KeyError, TypeError, msgspec.DecodeError):
        return 0
