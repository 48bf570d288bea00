"""CURVE authentication and encryption, and ACLs (docs/security.md).

* :mod:`~hpbroker.security.acl` - the rules of ``security.acl_file``, sans-IO;
* :mod:`~hpbroker.security.requests` - what each client request needs;
* :mod:`~hpbroker.security.guard` - the acceptor's per-request check;
* :mod:`~hpbroker.security.keys` - key pairs on disk, the trusted keys;
* :mod:`~hpbroker.security.zap` - the ZAP handler: who may connect at all;
* :mod:`~hpbroker.security.reload` - edits of the ACL and trusted keys, taken while running;
* :class:`BrokerSecurity` - what one broker process needs of all that.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq

from hpbroker.security.acl import Acl, AclError
from hpbroker.security.guard import Guard
from hpbroker.security.keys import KeyFileError, authorized_keys
from hpbroker.security.reload import Reloader
from hpbroker.security.zap import CLIENT, REPLICATION, KeyPolicy, Zap
from hpbroker.sockets import Curve

__all__ = ["Acl", "AclError", "BrokerSecurity", "CLIENT", "Guard", "KeyFileError", "REPLICATION", "check", "load_acl"]

log = logging.getLogger("hpbroker.security")


def load_acl(path: str) -> Acl:
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise AclError(f"acl_file {path}: {e.strerror}") from None
    return Acl.parse(text, path)


def check(sec, role: str) -> None:
    """Load everything ``sec`` (the [security] section) names, once, at
    start: ValueError (one line) for a key, directory or ACL that cannot be
    used, so a broker never starts half-secured."""
    if not sec.curve:
        return
    Curve.load(sec.server_secret_key_file)
    keys = authorized_keys(sec.authorized_keys_dir)
    if sec.acl_source == "file":  # from ZooKeeper: checked once the broker reads it there (broker/cluster_mode.py)
        load_acl(sec.acl_file)
    if role == "slave":
        Curve.load(sec.server_secret_key_file, server_key=sec.master_public_key)
    if not keys:
        log.warning("security.authorized_keys_dir %s holds no *.key: no client can connect", sec.authorized_keys_dir)


class BrokerSecurity:
    """One broker process's CURVE: its key pair, the ZAP handler of its
    context (started before the first server socket binds) and the ACL.
    With ``curve`` off every method returns None and nothing starts."""

    def __init__(self, sec, ctx: zmq.Context):
        """``sec``: the [security] section (hpbroker.config.SecurityConfig)."""
        self.sec = sec
        self.ctx = ctx
        self.on = bool(sec.curve)
        self._zap: Zap | None = None
        self._policy: KeyPolicy | None = None
        self._acl: Acl | None = None
        self._guards: list[Guard] = []
        self._reloader: Reloader | None = None
        self._own: Curve | None = Curve.load(sec.server_secret_key_file) if self.on else None

    @property
    def acl(self) -> Acl:
        if self._acl is None:
            self._acl = load_acl(self.sec.acl_file)
        return self._acl

    def server(self, domain: str) -> Curve | None:
        """CURVE options for a socket this process binds in ``domain``
        (CLIENT or REPLICATION); starts the context's ZAP handler first."""
        if not self.on:
            return None
        if self._zap is None:
            self._policy = KeyPolicy(authorized_keys(self.sec.authorized_keys_dir), self.acl)
            self._zap = Zap(self.ctx, self._policy)
            self._zap.start()
        return Curve(self._own.public, self._own.secret, None, domain)

    def to_master(self) -> Curve | None:
        """CURVE options for a socket that connects to the master (a slave's
        replication sockets, the promotion probe): this broker's own key pair."""
        if not self.on:
            return None
        if not self.sec.master_public_key:
            raise ValueError("security.master_public_key is not set: cannot connect to a master over CURVE")
        return Curve.load(self.sec.server_secret_key_file, server_key=self.sec.master_public_key)

    def guard(self) -> Guard | None:
        """The acceptor's per-request ACL check, or None with CURVE off."""
        if not self.on:
            return None
        g = Guard(self.acl)
        self._guards.append(g)
        return g

    def refresh(self) -> None:
        """Take edits of the ACL file and the trusted keys (at most every
        ``security.reload_ms``; :mod:`hpbroker.security.reload`): the
        guards and the ZAP handler of this process use them from now on."""
        if not self.on:
            return
        if self._reloader is None:
            self._reloader = Reloader(self.sec.acl_file, self.sec.authorized_keys_dir, self.sec.reload_ms / 1000)
        acl, keys = self._reloader.poll()
        if acl is not None:
            self._acl = acl
            for g in self._guards:
                g.acl = acl
            if self._policy is not None:
                self._policy.acl = acl
        if keys is not None and self._policy is not None:
            self._policy.keys = keys  # one attribute store: the ZAP thread sees the old dict or the new

    def close(self) -> None:
        """Stop the ZAP thread (before the context is destroyed)."""
        if self._zap is not None:
            self._zap.stop()
            self._zap = None
