"""What each client request needs from the ACL (docs/security.md, "What each request needs").

=================================  ===========================================
request                            needs
=================================  ===========================================
Produce, ProduceMessages           produce on the topic
Fetch, ListOffsets                 consume on the topic
Metadata naming topics             produce, consume or admin on each (naming a
                                   topic may auto-create it); with none named,
                                   nothing
CreateTopic                        admin on the topic
GroupHeartbeat                     consume on each subscribed topic
OffsetCommit of a member           consume on each topic committed
OffsetCommit with no member        admin on each topic (an offset reset)
OffsetFetch naming partitions      consume on each topic
Stats, Promote                     admin on the cluster (a rule with topic "*")
TxProduce, TxEnd with messages     produce on each topic of its parts
TxEnd heuristic (hpbroker tx),     admin on the cluster: an operator resolving
TxList                             or listing transactions
InitProducerId, FindCoordinator,   nothing beyond a known key
ListGroups, DescribeGroup, TxBegin,
TxEnd (commit, prepare, rollback)
any other request                  admin on the cluster, until it is listed here
=================================  ===========================================
"""

from __future__ import annotations

from hpbroker.protocol import messages as m
from hpbroker.security.acl import Acl

ANY = ("produce", "consume", "admin")
_OPEN = (m.InitProducerId, m.FindCoordinator, m.ListGroups, m.DescribeGroup, m.TxBegin)


def requirements(req) -> list[tuple[tuple[str, ...], str | None]]:
    """(actions, any one of which will do; topic or None for the cluster)
    for every check ``req`` must pass."""
    match req:
        case m.Produce() | m.ProduceMessages():
            return [(("produce",), req.topic)]
        case m.Fetch() | m.ListOffsets():
            return [(("consume",), req.topic)]
        case m.Metadata():
            return [(ANY, t) for t in dict.fromkeys(req.topics or ())]
        case m.CreateTopic():
            return [(("admin",), req.topic)]
        case m.GroupHeartbeat():
            return [(("consume",), t) for t in dict.fromkeys(req.topics)]
        case m.OffsetCommit():
            action = ("consume",) if req.member_id else ("admin",)
            return [(action, t) for t in dict.fromkeys(e.topic for e in req.offsets)]
        case m.OffsetFetch():
            return [(("consume",), t) for t in dict.fromkeys(tp.topic for tp in req.partitions or ())]
        case m.TxProduce():
            return [(("produce",), t) for t in dict.fromkeys(pt.topic for pt in req.parts)]
        case m.TxEnd():
            if req.heuristic:
                return [(("admin",), None)]
            return [(("produce",), t) for t in dict.fromkeys(pt.topic for pt in req.parts)]
        case _ if isinstance(req, _OPEN):
            return []
        case _:
            return [(("admin",), None)]


def denied(acl: Acl, principal: str, req) -> tuple[str, str | None] | None:
    """The first (action, topic) ``principal`` lacks for ``req``, or None when it may."""
    for actions, topic in requirements(req):
        if not any(acl.check(principal, a, topic) for a in actions):
            return "/".join(actions), topic
    return None
