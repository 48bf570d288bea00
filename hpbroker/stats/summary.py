"""The stats block in ``stats`` lines: group commit, fdatasync and ack latency.

The writers and acceptors count these in the shared stats block
(:mod:`hpbroker.stats.layout`); ``/metrics`` exports them as Prometheus
histograms.  :func:`io_stats` turns the same numbers into the flat
``name value`` pairs of the broker's ``Stats`` reply, so ``hpbroker
stats`` and the text port's ``stats`` (as ``broker_*``) show them too:

=============================  ==============================================
``group_commit_rounds``        rounds the writers started
``group_commit_batches_avg``   batches per round, mean
``group_commit_batches_p99``   ... 99th percentile (its bucket's upper bound)
``group_commit_bytes_avg``     bytes per round, mean
``appended_bytes``             batch bytes appended
``fdatasync_count``            fdatasync calls of segment files
``fdatasync_us_avg``           their duration, mean, microseconds
``fdatasync_us_p50``/``_p99``  percentiles (upper bound of the bucket)
``produce_ack_us_avg``/``_p99`` request in at the acceptor -> ack out
=============================  ==============================================

A percentile is the upper bound of the histogram bucket it falls in (as
Prometheus' ``histogram_quantile`` would bound it); past the last bound it
is the last bound with ``+``.  Everything is since the broker started.
"""

from __future__ import annotations

from hpbroker.stats import layout as L


def _bound(h: L.Histogram, buckets: list[int], count: int, q: float, scale: float):
    if not count:
        return 0
    want, running = q * count, 0
    for bound, n in zip(h.bounds, buckets):
        running += n
        if running >= want:
            v = bound * scale
            return int(v) if float(v).is_integer() else round(v, 3)
    last = h.bounds[-1] * scale
    return f"{int(last) if float(last).is_integer() else last}+"


def io_stats(snap) -> dict:
    """The group-commit, fdatasync and ack-latency lines of a stats-block snapshot."""
    out: dict = {"group_commit_rounds": snap.counters["rounds"], "appended_bytes": snap.counters["appended_bytes"]}
    for name, prefix, scale, pcts in (("group_commit_batches", "group_commit_batches", 1, (0.99,)),
                                      ("group_commit_bytes", "group_commit_bytes", 1, ()),
                                      ("fdatasync_seconds", "fdatasync_us", 1e6, (0.5, 0.99)),
                                      ("produce_ack_latency_seconds", "produce_ack_us", 1e6, (0.99,))):
        h = L.HISTOGRAMS[L.HISTOGRAM_INDEX[name]]
        buckets, total, count = snap.histograms[name]
        if name == "fdatasync_seconds":
            out["fdatasync_count"] = count
        out[f"{prefix}_avg"] = round(total * scale / count, 1) if count else 0
        for q in pcts:
            out[f"{prefix}_p{int(q * 100)}"] = _bound(h, buckets, count, q, scale)
    return out
