"""Is this broker ready to serve its role, and if not, why: the ``ready`` and
``ready_reason`` fields of the Stats reply (``hpbroker stats``; an HTTP
``/readyz`` reads the same two fields).

=========================  =====  ===============================================
role, replicator's report  ready  ready_reason
=========================  =====  ===============================================
standalone, master         1      ""  (an acceptor answers only once the broker
                                  has started)
slave, no report yet       0      the replicator has not reported yet
slave, not streaming       0      not following MASTER: STATE: DETAIL (the
                                  handshake's refusal, an unanswered master)
slave, partitions stopped  0      not following P: the disk error that fenced it
or paused                         / the master could not say where its epochs end
slave, streaming           1      ""
=========================  =====  ===============================================

A slave that only *catches up* is following its master: ready.  A master
whose slave is out of sync still serves acks=1 and consumers: ready (its
``slave_<id>_insync`` and the NOT_ENOUGH_REPLICAS answers say the rest);
taking it out of a load balancer would stop every producer, not just
acks=all.  Pure: the role and the stats dict in, no sockets.
"""

from __future__ import annotations


def readiness(role: str, stats: dict) -> tuple[int, str]:
    """-> (1 or 0, one line saying why not ready, '' when ready)."""
    if role != "slave":
        return 1, ""
    state = stats.get("replication_state")
    master = stats.get("replication_master", "its master")
    if state is None:
        return 0, "the replicator has not reported yet"
    if state != "streaming":
        detail = stats.get("replication_detail") or ""
        return 0, f"not following {master}: {state}" + (f": {detail}" if detail else "")
    stopped = stats.get("replication_stopped_partitions") or ""
    if stopped:
        return 0, f"not following {master} for some partitions: {stopped}"
    if stats.get("replication_paused"):
        return 0, (f"not following {master} for {stats['replication_paused']} partition(s): the master could not "
                   "say where their epochs end (see the log)")
    return 1, ""
