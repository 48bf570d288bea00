"""Who may connect: the ZAP handler of a broker process (pyzmq's ``zmq.auth``).

libzmq asks the ZAP handler of a socket's context about every CURVE
handshake, naming the socket's ZAP domain and the peer's public key.  Two
domains, one per kind of socket:

========================  ===========================================  ===================================
domain                    sockets                                      admits
========================  ===========================================  ===================================
``hpbroker.client``       the client ROUTER of every acceptor          any key in authorized_keys_dir
``hpbroker.replication``  writers' PUB, the replicator's catch-up      a key in authorized_keys_dir whose
                          ROUTER and ack PULL, acceptors' slave-ack    principal the ACL grants
                          PULL                                         ``replicate``
========================  ===========================================  ===================================

An admitted key's principal (its certificate's name) becomes the ZAP
User-Id, which libzmq attaches to every message of that connection
(``frame.get("User-Id")``).  A refused key gets no connection at all: no
metadata, no data, not even an error reply.  :class:`KeyPolicy` is the
decision, sans-IO; :class:`Zap` runs pyzmq's ThreadAuthenticator with it.
"""

from __future__ import annotations

import logging
import time

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from hpbroker.security.acl import Acl

CLIENT = "hpbroker.client"
REPLICATION = "hpbroker.replication"
DOMAINS = (CLIENT, REPLICATION)
REFUSAL_LOG_EVERY_S = 60.0  # one line per refused key per minute: a reconnecting client retries every 0.1-2 s

log = logging.getLogger("hpbroker.security")


class KeyPolicy:
    def __init__(self, keys: dict[bytes, str], acl: Acl, clock=time.monotonic):
        """``keys``: {Z85 public key: principal} (security.keys.authorized_keys)."""
        self.keys = keys
        self.acl = acl
        self.clock = clock
        self._logged: dict[tuple[bytes, str], float] = {}

    def admit(self, domain: str, key: bytes, address: str = "") -> str | None:
        """The principal of Z85 ``key`` if it may connect on ``domain``, else None (and a log line)."""
        name = self.keys.get(key)
        if domain not in DOMAINS:
            why = f"unknown ZAP domain {domain!r}"
        elif name is None:
            why = "unknown key"
        elif domain == REPLICATION and not self.acl.check(name, "replicate"):
            why = f"principal {name} is not granted replicate"
        else:
            return name
        now = self.clock()
        if now >= self._logged.get((key, domain), float("-inf")):
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[(key, domain)] = now + REFUSAL_LOG_EVERY_S
            log.warning("refused a CURVE connection on %s from %s: %s (key %s)", domain, address or "?", why,
                        key.decode("ascii", "replace"))
        return None


class _Provider:
    """pyzmq's credentials-provider interface over a KeyPolicy."""

    def __init__(self, zap: "Zap"):
        self.zap = zap

    def callback(self, domain: str, key: bytes) -> bool:
        return self.zap.policy.admit(domain, key, self.zap.address) is not None


class Zap(ThreadAuthenticator):
    """The ZAP handler of one context, in a thread of its own; start it
    before the first CURVE server socket of the context binds."""

    def __init__(self, ctx: zmq.Context, policy: KeyPolicy):
        super().__init__(ctx, log=logging.getLogger("hpbroker.zap"))
        self.policy = policy
        self.address = ""  # the peer of the request being handled (for the refusal log line)

    def start(self) -> None:
        super().start()
        for domain in DOMAINS:
            self.configure_curve_callback(domain, _Provider(self))

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.policy.keys[z85.encode(client_public_key)]
