"""The one key -> partition rule: every client, the console and ``hpbroker tail`` agree on it.

``partition_for_key(key, n)`` is the CRC-32C (Castagnoli, the ``crc32c``
package, the same CRC the batch format uses) of the key's bytes, mixed by
MurmurHash3's 32-bit finalizer, modulo the topic's partition count ``n``.  Every path that places a keyed message uses
it: ``send()`` in every mode, and the re-send of a message that was spilled
before the partition count was known.  It depends on nothing but the key and
``n``, so it gives the same partition in every process and across restarts;
the count is the broker's metadata, read once per topic and then kept for
the producer's life (a broker that is briefly away cannot move a key), or
the ``topic_partitions`` the producer was given (MetaQ's configured
partition list), which then wins over the broker's.

Why the mixing: a CRC is linear, so keys that differ in one character
("user-1", "user-2"; "app1.log", "app2.log") differ in CRC by a pattern
that depends only on that difference, and its low bits, which ``% n``
keeps for a power-of-two ``n``, are often the same: the CRC alone put the
keys "0"..."15" on 2 of 4 partitions and six log files named app0.log to
app5.log on one of four.  The finalizer makes every bit of the CRC depend on
every other (Kafka's default partitioner uses murmur2 on the key for the
same reason); it costs a few integer operations per key.
"""

from __future__ import annotations

from crc32c import crc32c


def partition_for_key(key: bytes, n: int) -> int:
    """The partition of ``key`` among ``n`` (``0 <= result < n``)."""
    h = crc32c(key)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h % n
