"""The Producer's key -> partition function: :func:`hpbroker.partitioning.partition_for_key`
(a unit of its own below ``client``, so that ``hpbroker tail``'s agent,
which imports no client, places keys and files by the same rule)."""

from __future__ import annotations

from hpbroker.partitioning import partition_for_key

__all__ = ["partition_for_key"]
