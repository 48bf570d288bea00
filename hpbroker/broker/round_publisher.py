"""The round publisher: a master's writer sends each group-commit round to the slaves.

Built only on a master's writer, at start or when a slave's writer is
promoted.  The disk writer appends through it instead of straight to the
group commit, and calls :meth:`RoundPublisher.publish_round` as each round
starts and :meth:`RoundPublisher.note_flushed` with each round's outcome.

Batches wait for their round here, copied at append (the ring slot is reused
once drained) and stamped, laid end to end in a fixed-size buffer per
partition, its *arena* (uninitialised numpy memory), rather than in one
allocation per batch.  ZeroMQ sends slices of an arena without copying while
later batches fill the rest of it (disjoint bytes); a full arena is left to
the garbage collector and a new one started.  An arena stays alive while any
slice of it waits in ZeroMQ's queue, so its size is memory held beyond the
bytes queued (8 MiB arenas added 78 MiB to the master's RSS in the sync
bench; docs/performance.md).

The replicator does not see the batches; once a round is durable it hears,
in a note, each partition's high watermark and the bytes published (for the
slaves' lag).  Notes go out when the reporter's held reports do
(``replication.writer_report_ms``).
"""

from __future__ import annotations

import numpy as np
import zmq

from hpbroker import batch
from hpbroker.io import GroupCommit, Storage
from hpbroker.ipc import replica as ipc_replica
from hpbroker.sockets import try_send

ARENA_BYTES = 2 << 20

PartitionKey = tuple[str, int]


class RoundPublisher:
    """``pub``: the PUB socket the slaves subscribe to; ``replicator_feed``:
    the PUSH socket to this broker's replicator."""

    def __init__(self, storage: Storage, group_commit: GroupCommit, pub: zmq.Socket, replicator_feed: zmq.Socket,
                 *, arena_bytes: int = ARENA_BYTES):
        self._storage = storage
        self._group_commit = group_commit
        self._pub = pub
        self._replicator_feed = replicator_feed
        self._arena_bytes = arena_bytes
        self._arena_of: dict[PartitionKey, list] = {}  # partition -> [arena, bytes filled]
        self._unpublished: list[tuple[PartitionKey, memoryview, int, int]] = []  # (partition, arena, start, end)
        self._bytes_in_flight: dict[PartitionKey, int] = {}  # published by the round the disk is on
        self._unsent_note: dict[PartitionKey, list] = {}  # partition -> [high watermark, bytes published]

    def append(self, plog, view: memoryview, epoch: int, ticket) -> None:
        """``group_commit.append`` for a batch the slaves will be sent when its
        round starts: copy it into the partition's arena now and stamp it
        there as the log does."""
        key = plog.key
        plog.rollback_on_enospc = False  # the slaves may hold a round the disk refused: fence, never reuse its offsets
        n = len(view)
        arena_fill = self._arena_of.get(key)
        if arena_fill is None or arena_fill[1] + n > len(arena_fill[0]):
            arena_fill = self._arena_of[key] = [memoryview(np.empty(max(self._arena_bytes, n), np.uint8)), 0]
        arena, start = arena_fill
        end = start + n
        arena[start:end] = view
        base, _ = self._group_commit.append(plog, view, epoch, callback=ticket)
        arena_fill[1] = end  # only now: a batch the log refused leaves its bytes to be overwritten
        batch.stamp(arena, base, epoch, start)
        self._unpublished.append((key, arena, start, end))

    def publish_round(self) -> None:
        """Send the round just handed to the disk to the slaves, one PUB
        message per partition: [b"B", FeedMeta(topic, partition, end
        offset), chunk, ...], each chunk whole batches laid end to end
        (usually one chunk: a round's batches of a partition are contiguous
        in its arena).

        Published before it is durable here, a round can reach a slave and
        then fail on this disk.  Nothing of it is acknowledged, the partition
        is fenced (``rollback_on_enospc`` is off, so even ENOSPC fences and no
        offset is ever assigned twice), and the epoch this broker takes at its
        next start makes the slave truncate it at the handshake."""
        if not self._unpublished:
            return
        runs_of: dict[PartitionKey, list] = {}  # partition -> [[arena, start, end], ...]
        for key, arena, start, end in self._unpublished:
            runs = runs_of.setdefault(key, [])
            if runs and runs[-1][0] is arena and runs[-1][2] == start:
                runs[-1][2] = end
            else:
                runs.append([arena, start, end])
        self._unpublished = []
        for key, runs in runs_of.items():
            plog = self._storage.find(*key)
            if plog is None or plog.fenced is not None:
                continue  # its flush did not start: nothing of it goes out
            chunks = [arena[start:end] for arena, start, end in runs]
            # PUB never blocks: past pub_hwm it drops, and a slave sees the gap
            # by offset and catches up from the files
            meta = ipc_replica.encoder.encode(ipc_replica.FeedMeta(*key, plog.log_end_offset))
            self._pub.send_multipart([b"B", meta, *chunks], copy=False)
            self._bytes_in_flight[key] = self._bytes_in_flight.get(key, 0) + sum(len(c) for c in chunks)

    def note_flushed(self, results: dict) -> bool:
        """Add the published partitions a flush finished (``results`` as the
        group commit reports them) to the next note.  True when a note waits
        to be sent."""
        if self._bytes_in_flight:
            for key, result in results.items():
                n = self._bytes_in_flight.pop(key, None)
                if n is not None:
                    entry = self._unsent_note.setdefault(key, [-1, 0])
                    entry[0] = result if isinstance(result, int) else -1
                    entry[1] += n
        return bool(self._unsent_note)

    def send_note(self) -> None:
        """One note to the replicator: per partition, high watermark and bytes published."""
        if not self._unsent_note:
            return
        sizes = [ipc_replica.Published(k[0], k[1], hwm, n) for k, (hwm, n) in self._unsent_note.items()]
        self._unsent_note = {}
        try_send(self._replicator_feed, ipc_replica.encoder.encode(sizes))
        # dropped when the replicator is behind: its lag in bytes under-reports for a moment
