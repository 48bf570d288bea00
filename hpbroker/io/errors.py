"""What the storage engine raises.

Every error carries the partition directory it concerns.  The rule they
encode (docs/storage.md, "Failure handling"):

* :class:`DiskFull` - a write hit ENOSPC.  The batches that were not yet
  acknowledged are failed, the log is rolled back to its last acknowledged
  end, and the partition stays writable: the next append goes on from there
  once space is freed.
* :class:`PartitionFenced` - a write or fsync failed (EIO, ...) or recovery
  found corruption before the tail.  The partition is read-only from then on
  (up to what was durable); a restart runs recovery again.  Never retried.
* :class:`OffsetOutOfRange` - a read below the earliest offset still kept.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class; ``partition`` is the partition directory (or None)."""

    def __init__(self, message: str, partition: str | None = None, cause: BaseException | None = None):
        super().__init__(message)
        self.partition = partition
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause


class PartitionFenced(StorageError):
    """The partition failed a write/fsync or holds mid-log corruption; read-only now."""


class DiskFull(StorageError):
    """ENOSPC: not-yet-acknowledged batches failed; the log end went back to
    ``rolled_back_to`` (every batch at or past it failed)."""

    def __init__(self, message: str, partition: str | None = None, cause: BaseException | None = None,
                 rolled_back_to: int = -1):
        super().__init__(message, partition, cause)
        self.rolled_back_to = rolled_back_to


class OffsetOutOfRange(StorageError):
    """The requested offset is below the earliest offset still kept."""
