"""Rings in POSIX shared memory: naming, create/attach/unlink, heartbeats, stale cleanup.

Names are deterministic per broker instance (a short string such as
``p7600``) and ring::

    segment             /hpb.<instance>.<ring>          -> /dev/shm/hpb.<instance>.<ring>
    "space" semaphore   /hpb.<instance>.<ring>.space    -> /dev/shm/sem.hpb.<instance>.<ring>.space
    doorbell semaphore  /hpb.<instance>.<bell>.bell     -> /dev/shm/sem.hpb.<instance>.<bell>.bell

The doorbell is the semaphore the consumer sleeps on; its name is written in
the ring header, so several rings can share one (a disk writer sleeping on
all its input rings).  By default each ring has its own (``bell = ring``).

The creator of a segment is its owner: its pid, start time and a heartbeat
are in the header, and it unlinks the segment (and the ring's own
semaphores), on a clean shutdown or (a broker) as soon as every process
has them open.  :mod:`hpbroker.ring.reclaim` finds segments and removes
what a killed owner left behind.  Every process that holds a ring endpoint runs
one daemon thread that stamps the heartbeats of all its endpoints every
``heartbeat_ms``; nothing needs to call ``heartbeat()`` by hand.
"""

from __future__ import annotations

import mmap
import os
import re
import threading

import posix_ipc

from hpbroker.ring import layout as L
from hpbroker.ring.errors import RingError
from hpbroker.ring.liveness import now_ns, start_time
from hpbroker.ring.ring import Ring
from hpbroker.ring.wait import SemaphoreSignal, SpinThenBlock

__all__ = [
    "SharedRing",
    "Doorbell",
    "segment_name",
    "space_name",
    "bell_name",
    "SHM_DIR",
]

SHM_DIR = "/dev/shm"
PREFIX = "hpb"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")


def _check(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must be 1-48 characters of [A-Za-z0-9_-]")
    return name


def segment_name(instance: str, ring: str) -> str:
    return f"/{PREFIX}.{_check('instance', instance)}.{_check('ring', ring)}"


def space_name(instance: str, ring: str) -> str:
    return segment_name(instance, ring) + ".space"


def bell_name(instance: str, bell: str) -> str:
    return f"/{PREFIX}.{_check('instance', instance)}.{_check('doorbell', bell)}.bell"


def _semaphore(name: str):
    return posix_ipc.Semaphore(name, posix_ipc.O_CREAT, mode=0o600, initial_value=0)


def _unlink_sem(name: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def _unlink_shm(name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


# -- heartbeats ----------------------------------------------------------------------
class _Heartbeats:
    """One daemon thread per process stamping every registered heartbeat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: dict[int, tuple[callable, float]] = {}
        self._thread = None
        self._wake = threading.Event()

    def add(self, key: int, beat, interval_s: float) -> None:
        with self._lock:
            self._beats[key] = (beat, interval_s)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hpb-ring-heartbeat", daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, key: int) -> None:
        with self._lock:
            self._beats.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                beats = list(self._beats.values())
            interval = min((i for _, i in beats), default=1.0)
            for beat, _ in beats:
                try:
                    beat()
                except (ValueError, TypeError):  # released views: the ring was closed meanwhile
                    pass
            self._wake.wait(interval)
            self._wake.clear()


_heartbeats = _Heartbeats()


class Doorbell:
    """A named semaphore that several rings' producers post and one consumer sleeps on."""

    def __init__(self, instance: str, name: str) -> None:
        self.instance, self.name = instance, name
        self.sem_name = bell_name(instance, name)
        self.semaphore = _semaphore(self.sem_name)
        self.signal = SemaphoreSignal(self.semaphore)
        self._unlinked = False

    def close(self) -> None:
        self.semaphore.close()

    def unlink(self) -> None:
        """Remove the name (once: a later call never removes a namesake
        another process created meanwhile); whoever has it open keeps it."""
        if not self._unlinked:
            self._unlinked = True
            _unlink_sem(self.sem_name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        self.unlink()


class SharedRing:
    """A ring in a POSIX shared-memory segment, with its semaphores and heartbeats.

    Create it in one process (the owner), attach in the other, and take one
    endpoint per process: ``writer()`` or ``reader()``.  ``close()`` detaches
    (marking this process's endpoint closed); ``unlink()`` removes the
    segment and its semaphores (the owner's job on a clean shutdown; used as
    a context manager the owner does both).
    """

    def __init__(self, instance: str, name: str, mm: mmap.mmap, ring: Ring, owner: bool, heartbeat_ms: int,
                 fd: int = -1) -> None:
        self.instance, self.name = instance, name
        self.shm_name = segment_name(instance, name)
        self.owner = owner
        # The owner keeps the segment's fd open for as long as it maps it, so
        # that once the name is unlinked (SharedRing.unlink while running) the
        # ring is still found through /proc/<owner>/fd (hpbroker ring stat).
        self._fd = fd
        self._unlinked = False
        self.heartbeat_s = heartbeat_ms / 1000
        self._mm = mm
        self.ring = ring
        self.bell = ring.doorbell or name
        self._space = _semaphore(space_name(instance, name))
        self._bell = _semaphore(bell_name(instance, self.bell))
        self._endpoints = []
        if owner:
            hq, beat_w = ring.hq, L.word(L.OWNER_HEARTBEAT_OFF)
            _heartbeats.add(id(self), lambda: hq.__setitem__(beat_w, now_ns()), self.heartbeat_s)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        instance: str,
        name: str,
        capacity: int,
        *,
        alignment: int = 8,
        doorbell: str | None = None,
        generation: int = 0,
        heartbeat_ms: int = 100,
    ) -> "SharedRing":
        """Create the segment ``/hpb.<instance>.<name>`` (FileExistsError if it exists:
        run :func:`cleanup_stale` at start)."""
        shm_name = segment_name(instance, name)
        bell = _check("doorbell", doorbell) if doorbell else name
        if not L.is_power_of_two(capacity) or capacity < L.MIN_CAPACITY:
            raise ValueError(f"ring capacity must be a power of two >= {L.MIN_CAPACITY}, not {capacity}")
        size = L.segment_bytes(capacity)
        try:
            shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError:
            raise FileExistsError(f"shared memory {shm_name} exists (another broker, or run cleanup_stale)") from None
        try:
            mm = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            _unlink_shm(shm_name)
            raise
        fd = os.dup(shm.fd)  # kept: see __init__
        shm.close_fd()
        pid = os.getpid()
        try:
            ring = Ring(
                mm, init=True, capacity=capacity, alignment=alignment, doorbell=bell,
                generation=generation, owner_pid=pid, owner_start=start_time(pid),
            )
            return cls(instance, name, mm, ring, True, heartbeat_ms, fd=fd)
        except BaseException:
            os.close(fd)
            _unlink_shm(shm_name)
            raise

    @classmethod
    def attach(cls, instance: str, name: str, *, heartbeat_ms: int = 100) -> "SharedRing":
        """Map an existing ring read-write (FileNotFoundError if there is none)."""
        shm_name = segment_name(instance, name)
        try:
            shm = posix_ipc.SharedMemory(shm_name)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(f"no shared memory {shm_name}") from None
        try:
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        try:
            ring = Ring(mm)
        except BaseException:
            mm.close()
            raise
        return cls(instance, name, mm, ring, False, heartbeat_ms)

    # -- endpoints ---------------------------------------------------------------------
    def writer(self, *, spin_us: float = 50, full_timeout_ms: int = 1000, dead_after_ms: int | None = 1000):
        """The producer endpoint: sleeps on this ring's "space" semaphore, posts the doorbell."""
        from hpbroker.ring.writer import Writer

        w = Writer(
            self.ring,
            wait=SpinThenBlock(SemaphoreSignal(self._space), spin_us),
            wake=SemaphoreSignal(self._bell),
            full_timeout=full_timeout_ms / 1000,
            dead_after=None if dead_after_ms is None else dead_after_ms / 1000,
        )
        return self._register(w)

    def reader(self, *, spin_us: float = 50, dead_after_ms: int | None = 1000):
        """The consumer endpoint: sleeps on the doorbell, posts the "space" semaphore."""
        from hpbroker.ring.reader import Reader

        r = Reader(
            self.ring,
            wait=SpinThenBlock(SemaphoreSignal(self._bell), spin_us),
            wake=SemaphoreSignal(self._space),
            dead_after=None if dead_after_ms is None else dead_after_ms / 1000,
        )
        return self._register(r)

    def _register(self, endpoint):
        self._endpoints.append(endpoint)
        _heartbeats.add(id(endpoint), endpoint.side.heartbeat, self.heartbeat_s)
        return endpoint

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        """Detach: mark our endpoints closed, stop their heartbeats, unmap, close semaphores."""
        if self._mm is None:
            return
        _heartbeats.remove(id(self))
        for e in self._endpoints:
            _heartbeats.remove(id(e))
            try:
                e.close()
            except (RingError, ValueError):
                pass
        self._endpoints.clear()
        self.ring.release()
        try:
            self._mm.close()
        except BufferError:  # a caller still holds a record view; the mapping goes with it
            pass
        self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for s in (self._space, self._bell):
            try:
                s.close()
            except posix_ipc.ExistentialError:
                pass

    def unlink(self) -> None:
        """Remove the names of the segment, its "space" semaphore and its own
        doorbell (not a shared one), once: a second call never removes a
        namesake created meanwhile.  Every process that has the ring mapped
        keeps using it; the memory goes with the last mapping, so a broker
        unlinks the names as soon as all its processes are attached and a
        kill -9 then leaves nothing behind (docs/ring.md, "Lifecycle").
        The semaphores go first: a segment still named after a crash here
        names them in its header, so a reclaimer can find them
        (:func:`hpbroker.ring.reclaim.reclaim_dead`)."""
        if self._unlinked:
            return
        self._unlinked = True
        _unlink_sem(space_name(self.instance, self.name))
        if self.bell == self.name:
            _unlink_sem(bell_name(self.instance, self.bell))
        _unlink_shm(self.shm_name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        if self.owner:
            self.unlink()
