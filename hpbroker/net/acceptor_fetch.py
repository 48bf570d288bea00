"""An acceptor's fetches: served from the segment files, long polls parked.

:class:`~hpbroker.net.acceptor.Acceptor` inherits this part.  A fetch that
finds less than ``min_bytes`` is parked (:mod:`hpbroker.net.fetch`) until
new data, its ``max_wait_ms`` or shutdown; a sync master's consumers are
kept to what the in-sync slaves hold (``replication.fetch_bound``).
"""

from __future__ import annotations

from hpbroker.protocol import codec
from hpbroker.protocol import messages as m
from hpbroker.protocol.errors import BrokerError


class AcceptorFetch:
    """The Acceptor's fetch path (it provides ``fetch``, ``cluster``,
    ``acks``, ``stats``, ``clock``, ``stopping``, ``_fetch_replicated`` and
    ``_reply``)."""

    def _fetch(self, ident: bytes, req: m.Fetch) -> None:
        flt = self.fetch.filter_of(req)  # a bad filter is BAD_REQUEST before anything else
        self.cluster.check_partition(req.topic, req.partition, auto=False)
        # parks a long poll that finds less than min_bytes (net/fetch.py)
        if not self.fetch.start(ident, req, self.clock(), wait=not self.stopping, flt=flt):
            self._serve_fetch(ident, req)

    def _serve_fetch(self, ident: bytes, req: m.Fetch) -> None:
        try:
            data, hwm, start, nxt = self.fetch.answer(req)
        except BrokerError as e:
            self._reply(ident, codec.error_reply(req, e.code, e.message))
            return
        self.stats.fetched(req, len(data), nxt)
        self._reply(ident, m.FetchReply(id=req.id, high_watermark=hwm, log_start_offset=start, next_offset=nxt), [data])

    def _wake_fetches(self, keys) -> None:
        for p in self.fetch.woken(keys):
            self._serve_fetch(p.ident, p.req)

    def _answer_parked_fetches(self) -> None:
        for p in self.fetch.all_parked():
            self._serve_fetch(p.ident, p.req)

    def _bound_fetches(self) -> None:
        """Keep consumers of a master to what the in-sync slaves hold
        (replication.fetch_bound), then answer the long polls that lets go."""
        policy, view = self.acks.policy, self.cluster.view
        bound = None
        if self._fetch_replicated and view is not None and view.role == "master" and policy.insync:
            bound = policy.replicated
        self.fetch.bound = bound
        keys = self.fetch.parked_keys()
        if keys:
            self._wake_fetches(keys)
