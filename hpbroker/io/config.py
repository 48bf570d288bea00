"""The ``[log]`` section of the broker configuration: segments, group commit, retention.

It lives with the storage it configures, so ``hpbroker.io`` needs nothing
from the rest of the broker; :class:`hpbroker.config.Config` nests it as
``log``.  Every key has a default and a description (docs/config.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

M = msgspec.Meta


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Storage: segments, group commit, retention."""

    segment_bytes: Annotated[int, M(ge=1 << 16, description="Roll to a new segment once the active one reaches this many bytes.")] = 1 << 30
    segment_ms: Annotated[int, M(ge=0, description="Roll a segment once its first batch is this many ms old (0 = never by age).")] = 7 * 24 * 3600 * 1000
    index_interval_bytes: Annotated[int, M(ge=0, description="Add a sparse .index/.timeindex entry after at least this many bytes of batches.")] = 4096
    flush_mode: Annotated[
        Literal["durable", "async"],
        M(description="durable: a batch is acknowledged after fdatasync. async: acknowledged after write(); fsync at most every async_fsync_interval_ms, so a machine crash can lose that window."),
    ] = "durable"
    flush_bytes: Annotated[int, M(ge=0, description="Group commit: fdatasync once this many bytes are pending (0 = no byte trigger).")] = 4 << 20
    flush_batches: Annotated[int, M(ge=0, description="Group commit: fdatasync once this many batches are pending (0 = no count trigger).")] = 1024
    flush_delay_us: Annotated[int, M(ge=0, description="Group commit: fdatasync at most this many microseconds after the oldest pending batch arrived, or as soon as the round in flight finished when that takes longer. The writer also starts a round whenever its input queue drains and no round is in flight.")] = 2000
    io_threads: Annotated[int, M(ge=1, le=64, description="I/O threads per writer process. A group-commit round writes and fdatasyncs up to this many partitions at once, so the device sees that queue depth; each partition always uses the same thread, so its writes never reorder.")] = 4
    async_fsync_interval_ms: Annotated[int, M(ge=1, description="async mode: the longest time written data may stay un-synced (the documented loss window).")] = 1000
    direct_io: Annotated[bool, M(description="Append with O_DIRECT from page-aligned buffers where the filesystem allows it; fall back to buffered writes (logged once) where it does not.")] = True
    write_buffer_bytes: Annotated[int, M(ge=1 << 16, description="Size of the page-aligned staging buffer each partition appends through.")] = 8 << 20
    retention_ms: Annotated[int, M(ge=-1, description="Delete (or archive) closed segments whose newest batch is older than this (-1 = keep forever).")] = 7 * 24 * 3600 * 1000
    retention_bytes: Annotated[int, M(ge=-1, description="Delete (or archive) the oldest closed segments while the partition is larger than this (-1 = no size limit).")] = -1
    retention_policy: Annotated[
        Literal["delete", "archive"],
        M(description="What retention does with an expired segment: delete it, or keep a compressed copy under archive_dir (as MetaQ's archive policy did)."),
    ] = "delete"
    archive_dir: Annotated[str, M(description="Where archived segments go; empty means '<partition dir>/archive'.")] = ""
    retention_check_ms: Annotated[int, M(ge=100, description="How often the writer checks retention.")] = 60_000
    delete_delay_ms: Annotated[int, M(ge=0, description="How long a segment that retention took out of the log (renamed to *.deleted, out of every listing) stays on disk before it is removed (or archived, then removed), so a fetch that opened it just before can finish, as Kafka's file.delete.delay.ms (0 = remove at once). Checked about once a second.")] = 60_000
    delete_chunk_bytes: Annotated[int, M(ge=0, description="A segment file that retention removes (or has archived) is shrunk this many bytes at a time from its end before the unlink, so the filesystem frees its blocks - and on a 'discard' mount trims them - over many small journal commits instead of one that every partition's fdatasync waits for (0 = unlink at once).")] = 16 << 20
    delete_chunk_pause_ms: Annotated[float, M(ge=0, description="Pause between two delete_chunk_bytes steps, so other commits get in between.")] = 5.0
