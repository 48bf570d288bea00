"""What ring operations raise."""


class RingError(Exception):
    """Base class of every ring error."""


class RingFull(RingError):
    """The consumer did not free enough space within the timeout (back-pressure)."""


class PeerDead(RingError):
    """The process on the other side of the ring is gone (pid dead or heartbeat stale)."""


class RingClosed(RingError):
    """The producer closed the ring cleanly and every record has been read."""


class RingCorrupt(RingError):
    """A record word that no valid producer could have written (bad length or alignment)."""
