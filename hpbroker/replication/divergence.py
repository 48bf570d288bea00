"""Where a slave's log parts from its master's history (KIP-101 with KIP-279).

Pure logic, no sockets: the slave's epoch entries of one partition, the
master's answer to "where does my latest epoch end on your side?", and the
reigns (epochs) the master led or followed, in; the offset to cut at and
whether that cut is unclean, out.

The slave asks about its latest epoch L.  If the master has L, the cut is
where L ends there.  If it does not (its answer names an older epoch F,
or -1), nothing here after F is the master's: the cut is where F ends on
the master or where F ends here, whichever comes first.  Cutting at the
master's end of F alone would keep this log's batches of later epochs lying
below it, where the master holds different batches: the replicas would
differ in the middle (Kafka's KIP-279).

The batches of epochs after F that such a cut removes are unclean when
the master never led nor followed their epoch: then a master it never heard
of acknowledged them (this broker in a reign of its own, or the other side
of a split brain).  When it did follow that reign and only missed its last
batches, no acks=all acknowledged them: a clean failover.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpbroker.io.epochs import end_of


@dataclass(frozen=True)
class Cut:
    offset: int  # the log is cut here (>= log end: nothing to cut)
    strangers: tuple[int, ...] = ()  # epochs cut whose reign the master never led nor followed

    @property
    def unclean(self) -> bool:
        return bool(self.strangers)


def plan_cut(entries: list[tuple[int, int]], log_end: int, found: int, master_end: int,
             master_reigns: set[int]) -> Cut:
    """The cut for a slave whose epochs are ``entries`` and log ends at
    ``log_end``, given the master's answer (``found``, ``master_end``) to its
    latest epoch."""
    latest = entries[-1][0] if entries else -1
    if found == latest:
        return Cut(min(master_end, log_end))
    _, ours = end_of(entries, found, log_end)  # where this log leaves the master's history
    cut = min(master_end, ours)
    strangers = tuple(e for e, start in entries if e > found and e not in master_reigns and start < log_end)
    return Cut(cut, strangers if cut < log_end else ())
