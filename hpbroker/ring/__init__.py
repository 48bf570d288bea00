"""hpbroker.ring: bytes-only single-producer/single-consumer rings in shared memory.

The ring knows bytes and a type id, never message classes; it takes its
memory as an argument (a ``bytearray`` in tests, POSIX shared memory in
the broker).  See docs/ring.md for the byte layout and the protocol.

Public names:

* :class:`Ring` - the views over any writable buffer; ``ring.writer()``,
  ``ring.reader()``.
* :class:`Writer` - ``claim/commit/abort``, ``write``, ``write_many``.
* :class:`Reader` - ``poll/take/release``, ``drain``, ``wait``,
  ``receive``, ``read``.
* :class:`ReaderGroup` - one consumer sleeping on many rings (a doorbell).
* :class:`SharedRing`, :class:`Doorbell` - POSIX shared-memory lifecycle;
  :func:`list_segments`, :func:`cleanup_stale`, :func:`reclaim_dead` -
  finding segments and removing what killed owners left (``reclaim.py``).
* wait strategies :class:`SpinThenBlock`, :class:`BusySpin`; signals
  :class:`SemaphoreSignal`, :class:`ThreadSignal`.
* errors :class:`RingError`, :class:`RingFull`, :class:`PeerDead`,
  :class:`RingClosed`, :class:`RingCorrupt`.

This package imports no other hpbroker module and no zmq.
"""

from hpbroker.ring.errors import PeerDead, RingClosed, RingCorrupt, RingError, RingFull
from hpbroker.ring.group import ReaderGroup
from hpbroker.ring.reader import Reader
from hpbroker.ring.ring import Ring, header_snapshot
from hpbroker.ring.reclaim import cleanup_stale, is_stale, list_segments, reclaim_dead
from hpbroker.ring.shm import Doorbell, SharedRing, bell_name, segment_name, space_name
from hpbroker.ring.wait import BusySpin, SemaphoreSignal, SpinThenBlock, ThreadSignal, full_fence
from hpbroker.ring.writer import Writer

__all__ = [
    "BusySpin",
    "Doorbell",
    "PeerDead",
    "Reader",
    "ReaderGroup",
    "Ring",
    "RingClosed",
    "RingCorrupt",
    "RingError",
    "RingFull",
    "SemaphoreSignal",
    "SharedRing",
    "SpinThenBlock",
    "ThreadSignal",
    "Writer",
    "bell_name",
    "cleanup_stale",
    "full_fence",
    "header_snapshot",
    "is_stale",
    "list_segments",
    "reclaim_dead",
    "segment_name",
    "space_name",
]
