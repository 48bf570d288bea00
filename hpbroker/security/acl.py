"""Who may do what: the rules of ``security.acl_file``, sans-IO.

An ACL file is TOML, a list of ``[[allow]]`` rules; anything no rule
allows is refused (docs/security.md, "ACLs")::

    [[allow]]
    principals = ["alice", "app-*"]     # certificate names, globs; "*" = every known key
    topics = ["logs", "logs.*"]         # topic names or globs (fnmatch); default ["*"]
    actions = ["produce", "consume"]    # produce | consume | admin | replicate

A topic pattern is a glob matched against the whole name (``logs.*``
matches ``logs.a`` and ``logs.a.b``, not ``logs``; a prefix is a glob ending
in ``*``).  Cluster-wide operations (promote, stats, replication) have no
topic: only a rule whose ``topics`` contains ``"*"`` itself grants them.

:meth:`Acl.check` is the one question the broker asks, once per request
(not per message), and its answers are cached.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Literal

import msgspec

Action = Literal["produce", "consume", "admin", "replicate"]
ACTIONS: tuple[str, ...] = ("produce", "consume", "admin", "replicate")
ALL = "*"
_CACHE_MAX = 65536  # answers kept; cleared when full (topics x principals is small in practice)


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    principals: list[str]
    actions: list[Action]
    topics: list[str] = msgspec.field(default_factory=lambda: [ALL])

    def grants(self, principal: str, action: str, topic: str | None) -> bool:
        if action not in self.actions or not any(fnmatchcase(principal, p) for p in self.principals):
            return False
        if topic is None:
            return ALL in self.topics
        return any(fnmatchcase(topic, t) for t in self.topics)


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    allow: list[Rule] = []


class AclError(ValueError):
    """An ACL file that cannot be used; the message is one line naming it."""


class Acl:
    def __init__(self, rules: list[Rule] | tuple[Rule, ...] = ()):
        self.rules = tuple(rules)
        self._cache: dict[tuple[str, str, str | None], bool] = {}

    @classmethod
    def parse(cls, text: bytes | str, where: str = "ACL") -> "Acl":
        """The rules of a TOML ACL file's text; AclError naming ``where``."""
        try:
            f = msgspec.toml.decode(text.encode() if isinstance(text, str) else text, type=_File)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise AclError(f"{where}: {e}") from None
        for i, r in enumerate(f.allow):
            if not r.principals or not r.actions or not r.topics:
                raise AclError(f"{where}: allow[{i}] needs non-empty principals, actions and topics")
        return cls(f.allow)

    def check(self, principal: str, action: str, topic: str | None = None) -> bool:
        """May ``principal`` do ``action`` (one of :data:`ACTIONS`) on
        ``topic`` (None: the cluster as a whole)?"""
        key = (principal, action, topic)
        ok = self._cache.get(key)
        if ok is None:
            if action not in ACTIONS:
                raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
            ok = any(r.grants(principal, action, topic) for r in self.rules)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = ok
        return ok
