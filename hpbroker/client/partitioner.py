"""The one key -> partition function of the Producer.

``partition_for_key(key, n)`` is the CRC-32C (Castagnoli, the ``crc32c``
package, the same CRC the batch format uses) of the key's bytes, modulo the
topic's partition count ``n``.  Every path that places a keyed message uses
it: ``send()`` in every mode, and the re-send of a message that was spilled
before the partition count was known.  It depends on nothing but the key and
``n``, so it gives the same partition in every process and across restarts;
the count is the broker's metadata, read once per topic and then kept for
the producer's life (a broker that is briefly away cannot move a key), or
the ``topic_partitions`` the producer was given (MetaQ's configured
partition list), which then wins over the broker's.

Why CRC-32C and not zlib's CRC-32: it is what the Producer always used, so
keys stay where they were; any stable hash would do.
"""

from __future__ import annotations

from crc32c import crc32c


def partition_for_key(key: bytes, n: int) -> int:
    """The partition of ``key`` among ``n`` (``0 <= result < n``)."""
    return crc32c(key) % n
