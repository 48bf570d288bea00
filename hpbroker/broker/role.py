"""Which role a broker starts in: its flags', unless it was promoted.

``hpbroker promote`` records in the data directory the master the broker
followed until then (``promoted_from`` in broker-state.json).  Restarted
with the same slave flags - a service manager's restart, a crash - a
promoted broker would otherwise follow a master that is gone, and the pair
would have no master until an operator stepped in.  A promoted PostgreSQL
standby stays primary across restarts for the same reason.

What the flags say, what the data directory says, and how it starts:

===============================  ==========================  ===============================
configured                       recorded                    starts as
===============================  ==========================  ===============================
slave of X                       promoted while following X  master (a new epoch); unless X
                                                             answers as a master: then slave
                                                             of X, which both would otherwise
                                                             be (docs/replication.md, "Two
                                                             masters")
slave of Y                       promoted while following X  slave of Y: the flags changed,
                                                             the operator chose
master or standalone             promoted while following X  as configured
slave of X, keep_promotion off   promoted while following X  slave of X
===============================  ==========================  ===============================

Every row but the first forgets the promotion (``forget``), so the flags
govern again from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StartRole:
    role: str
    forget: bool  # clear promoted_from: the flags govern from now on
    why: str  # one line for the log, '' when the flags simply hold


def start_role(role: str, master: str, promoted_from: str | None, keep_promotion: bool,
               master_answering: Callable[[], str | None]) -> StartRole:
    """``master_answering()`` asks the configured master and returns a
    description of it if it answers as a master, else None; it is called
    only when the answer decides."""
    if not promoted_from:
        return StartRole(role, False, "")
    if role != "slave":
        return StartRole(role, True, f"started as {role} by its flags: the promotion (while following "
                                     f"{promoted_from}) is over")
    if master != promoted_from:
        return StartRole(role, True, f"following {master} by its flags: the promotion (while following "
                                     f"{promoted_from}) is over")
    if not keep_promotion:
        return StartRole(role, True, f"following {master} again: this broker was promoted while following it, "
                                     "and replication.keep_promotion is false")
    live = master_answering()
    if live is not None:
        return StartRole(role, True, f"this broker was promoted while following {master}, but that broker answers "
                                     f"as a master again ({live}): following it as the flags say rather than "
                                     "being a second master (docs/replication.md, \"Two masters\")")
    return StartRole("master", False, f"starting as master, not as the slave of {master} the flags say: this broker "
                                      "was promoted (hpbroker promote) and that master does not answer as one. "
                                      "To follow it again, start it as a master first, or set "
                                      "replication.keep_promotion = false")
