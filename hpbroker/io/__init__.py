"""hpbroker.io: the durable segmented log (docs/storage.md).

Public names::

    Storage(data_dir, log_config, clock=time.time, fs=None)   # partitions of one data dir
    PartitionLog                                               # one partition's log (writer side)
    GroupCommit(log_config, clock=time.monotonic, on_io_done=None)  # flush policy over many partitions;
                                                               # flush() blocks, start_flush()/poll() pipeline
    PartitionReader(dir)                                       # read-only, any process
    StorageError, PartitionFenced, DiskFull, OffsetOutOfRange
    FileSystem, FaultyFileSystem                               # the syscall layer (fault injection)

``hpbroker.io`` imports only ``hpbroker.batch`` (its ``[log]`` config is :mod:`hpbroker.io.config`).
"""

from hpbroker.io.errors import DiskFull, OffsetOutOfRange, PartitionFenced, StorageError
from hpbroker.io.fs import FaultyFileSystem, FileSystem
from hpbroker.io.group_commit import GroupCommit
from hpbroker.io.log import PartitionLog
from hpbroker.io.reader import PartitionReader
from hpbroker.io.storage import Storage

__all__ = [
    "DiskFull", "FaultyFileSystem", "FileSystem", "GroupCommit", "OffsetOutOfRange", "PartitionFenced",
    "PartitionLog", "PartitionReader", "Storage", "StorageError",
]
