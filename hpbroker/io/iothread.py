"""One background thread that runs file I/O jobs in submission order.

Pipelined group commit (:meth:`hpbroker.io.GroupCommit.start_flush`) hands
each partition's staged bytes to this thread, which runs pwrite and
fdatasync (both release the GIL) while the caller keeps copying the next
batches into the partition's other staging buffer.  Jobs run strictly FIFO
on one thread, so two writes to the same file (the partial last block is
written twice) can never reorder, and an fdatasync covers every write
submitted before it.

The GIL matters here.  A thread woken from the queue must take the GIL
before it can enter pwrite, and CPython hands it over only when the holder
blocks or after ``sys.getswitchinterval()`` (5 ms).  The writer thread goes
straight back to copying batches (GIL held), so a new job would start only
after the writer's next wait and nothing would overlap (measured: 0.35 ms
from submit to pwrite per 4 MiB flush, the time of the next copy).  So
:meth:`submit` to an idle thread waits until the job has started: the
writer blocks for one thread switch, and the I/O thread is then inside
pwrite, without the GIL, while the writer copies.

The thread never touches log state and never calls a ticket callback: a job
only records its outcome.  The caller applies outcomes on its own thread
(:meth:`PartitionLog.flush_result`), so ``GroupCommit`` stays
single-threaded for its users.  ``on_done`` (optional, called on the I/O
thread after every job, must be thread-safe, e.g. a semaphore post) lets a
caller that sleeps wake up to collect results.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


class Job:
    __slots__ = ("fn", "args", "result", "exc", "_done", "_started")

    def __init__(self, fn, args):
        self.fn = fn
        self.args = args
        self.result = None
        self.exc: BaseException | None = None
        self._done = threading.Event()
        self._started = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class IOThread:
    def __init__(self, name: str = "hpbroker-io", on_done: Callable[[], None] | None = None):
        self._name = name
        self._on_done = on_done
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last: Job | None = None

    def start(self) -> None:
        """Start the thread now (``submit`` starts it otherwise)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    t = threading.Thread(target=self._run, name=self._name, daemon=True)
                    t.start()
                    self._thread = t

    def submit(self, fn, *args) -> Job:
        job = Job(fn, args)
        self.start()
        idle = self._last is None or self._last.done
        self._last = job
        self._q.put(job)
        if idle:  # let it reach its first syscall before we take the GIL back (see above)
            job._started.wait(0.05)
        return job

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            job._started.set()
            try:
                job.result = job.fn(*job.args)
            except BaseException as e:  # noqa: BLE001 - handed to the submitter, never lost
                job.exc = e
            job.fn = job.args = None  # drop buffer slices now, not when the Job dies
            job._done.set()
            if self._on_done is not None:
                try:
                    self._on_done()
                except Exception:  # noqa: BLE001 - a wake-up hook must not kill the I/O thread
                    pass

    def close(self) -> None:
        """Run what was submitted, then stop the thread."""
        t = self._thread
        if t is not None:
            self._q.put(None)
            t.join()
            self._thread = None
