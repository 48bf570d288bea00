"""The acceptor's authorization check: one call per request, before it is served.

The principal is the ZAP User-Id libzmq attached to the request's frames
(the name of the client's certificate, :mod:`hpbroker.security.zap`); what
the request needs is :mod:`hpbroker.security.requests`; the answer is the
:class:`~hpbroker.security.acl.Acl`'s.  A refusal is a BrokerError with
NOT_AUTHORIZED and a log line naming the principal (at most one per
principal, action and topic every 10 s, with the count since).
"""

from __future__ import annotations

import logging
import time

from hpbroker.protocol.errors import BrokerError, ErrorCode
from hpbroker.security.acl import Acl
from hpbroker.security.requests import denied

log = logging.getLogger("hpbroker.security")

DENIAL_LOG_EVERY_S = 10.0


class Guard:
    def __init__(self, acl: Acl, clock=time.monotonic):
        self.acl = acl
        self.clock = clock
        self.denials = 0
        self._quiet: dict[tuple, list] = {}  # (principal, action, topic) -> [log again at, refused since]

    @staticmethod
    def principal(frame) -> str:
        """The principal of a message's frame (received with copy=False)."""
        return frame.get("User-Id")

    def check(self, frame, req) -> None:
        """Raise NOT_AUTHORIZED unless the sender of ``frame`` may make ``req``."""
        who = self.principal(frame)
        lack = denied(self.acl, who, req)
        if lack is not None:
            self._refuse(who, lack[0], lack[1], type(req).__name__)

    def allow(self, principal: str, action: str, topic: str | None = None, what: str = "") -> None:
        """Raise NOT_AUTHORIZED unless ``principal`` may do ``action`` on
        ``topic`` (None: the cluster).  For requests whose needs the table in
        :mod:`hpbroker.security.requests` does not cover (transactions)."""
        if not self.acl.check(principal, action, topic):
            self._refuse(principal, action, topic, what or action)

    def _refuse(self, who: str, action: str, topic: str | None, what: str):
        self.denials += 1
        on = f"topic {topic}" if topic is not None else "the cluster"
        key = (who, action, topic)
        now = self.clock()
        q = self._quiet.get(key)
        if q is None or now >= q[0]:
            n = 1 if q is None else q[1] + 1
            if len(self._quiet) > 10_000:
                self._quiet.clear()
            self._quiet[key] = [now + DENIAL_LOG_EVERY_S, 0]
            log.warning("NOT_AUTHORIZED: principal %s may not %s on %s (%s)%s", who, action, on, what,
                        f"; {n} such refusals since the last line" if n > 1 else "")
        else:
            q[1] += 1
        raise BrokerError(ErrorCode.NOT_AUTHORIZED, f"principal {who} is not granted {action} on {on}")
