"""The producer's spill thread: the write queue into the journal, group by group, and the read-ahead's turn.

One thread, ``hpbroker-producer-spill``, per Producer with a ``spill_dir``
(:class:`~hpbroker.client.spiller.Spiller`, whose ``__init__`` holds the
state these methods use, under the Producer's one lock).  Each turn it takes
what queued up while its last ``fdatasync`` ran - record frames in seq
order, :class:`_Hole` places of batches being moved to the journal, the seqs
of re-sends answered - and writes them as one group
(:meth:`~hpbroker.client.spill.SpillJournal.write_frames`: one ``pwrite``,
one ``fdatasync``), backing off and keeping the group after a failed write;
then it reads the journal back ahead of the re-sends
(:mod:`~hpbroker.client.spill_resend`).  At close it writes what is queued
and stops.
"""

from __future__ import annotations

import logging
import time

from hpbroker.client.framing import JournalError

log = logging.getLogger("hpbroker.client")

#: wait before writing again after a failed write or fdatasync
WRITE_BACKOFF = 1.0


class _Hole:
    """A place in the write queue, and ``count`` seqs, reserved for the
    messages of an in-memory batch being moved to the journal; ``frames``
    once they are framed (outside the lock).  The spill thread writes up to
    the first hole still empty."""

    __slots__ = ("count", "frames")

    def __init__(self, count: int):
        self.count = count
        self.frames: list[bytes] | None = None


class SpillThread:
    """The spill thread's loop, a part of :class:`~hpbroker.client.spiller.Spiller`."""

    def _run(self) -> None:
        retry_at = 0.0
        while True:
            timeout = 0 if self.stopping else self._timeout(retry_at)
            self._event.wait(timeout)
            self._event.clear()
            with self._lock:
                self._armed = False
                stopping = self.stopping
                if time.monotonic() < retry_at and not stopping:
                    continue
                recs, self.queue = self.queue, []
                if any(e.__class__ is _Hole for e in recs):
                    recs = self._unhole(recs)
                qbytes, self.queued_bytes = self.queued_bytes, 0
                acks, self.acks = self.acks, []
            if recs or acks:
                try:
                    self.journal.write_frames(recs, acks)
                except (OSError, JournalError) as e:
                    with self._lock:
                        self.queue[:0] = recs
                        self.queued_bytes += qbytes
                        self.acks[:0] = acks
                        self.error = f"{type(e).__name__}: {e}"
                    if stopping:
                        log.error("producer: could not write %d spilled messages to %s at close (%s); they are "
                                  "lost", len(recs), self.directory, e)
                        return
                    log.error("producer: writing the spill journal %s failed (%s); trying again in %.0f s",
                              self.directory, e, WRITE_BACKOFF)
                    retry_at = time.monotonic() + WRITE_BACKOFF
                    continue
                except BaseException:
                    log.exception("producer: the spill thread failed")
                    with self._lock:
                        self.error = "the spill thread failed (see the log)"
                    return
                with self._lock:
                    self.synced += len(recs)
                    self.syncs = self.journal.syncs
                    self.disk_bytes = self.journal.disk_bytes
                    self.segments = len(self.journal.segments)
                    self.error = None
            if stopping:
                with self._lock:
                    q = self.queue
                    if not self.acks and (not q or q[0].__class__ is _Hole and q[0].frames is None):
                        if q:
                            log.error("producer: %d messages being moved to the spill journal %s were not "
                                      "framed before close; they are lost", sum(
                                          e.count if e.__class__ is _Hole else 1 for e in q), self.directory)
                        return
                continue
            try:
                self._read_ahead()
            except JournalError as e:
                log.error("producer: reading the spill journal back failed; nothing more is re-sent: %s", e)
                with self._lock:
                    self.error = f"{type(e).__name__}: {e}"
                return

    def _unhole(self, recs: list) -> list[bytes]:
        """(Lock held.)  The frames of ``recs`` up to its first empty hole
        (the rest goes back to the queue), holes replaced by their frames."""
        out = []
        for i, e in enumerate(recs):
            if e.__class__ is _Hole:
                if e.frames is None:
                    self.queue[:0] = recs[i:]
                    return out
                out += e.frames
            else:
                out.append(e)
        return out

    def _timeout(self, retry_at: float) -> float | None:
        now = time.monotonic()
        due = [retry_at] if retry_at > now else []
        with self._lock:
            if self.unresolved:
                due += [at for t, (fut, at) in self._lookups.items() if fut is None and t in self.unresolved]
        return max(0.0, min(due) - now) if due else None
