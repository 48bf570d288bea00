"""Picking up edits of the ACL and the trusted keys while the broker runs.

An operator who revokes a key or narrows a rule must not have to restart a
broker that serves a log-ingest tier.  :class:`Reloader` looks at the ACL
file and the directory of trusted public certificates at most every
``security.reload_ms``, by their (mtime, size) and the directory's listing:
sans-IO but for ``stat``, and with the clock passed in.  What changed is
parsed whole; only a valid result replaces what is in force.  An invalid
edit (a TOML error, a key under two names) leaves the old rules serving and
is logged once per change, naming the file and the error.

What a change reaches (docs/security.md, "Changing keys and rules while the
broker runs"): every request after it (the acceptors' per-request check),
and every CURVE handshake after it (the ZAP handler).  A connection already
authenticated keeps its CURVE session, but each of its requests is checked
against the new rules.
"""

from __future__ import annotations

import logging
import os
import time

from hpbroker.security.acl import Acl, AclError
from hpbroker.security.keys import KeyFileError, authorized_keys

log = logging.getLogger("hpbroker.security")


def _stamp_file(path: str, stat=os.stat) -> tuple | None:
    try:
        st = stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _stamp_dir(directory: str, stat=os.stat) -> tuple | None:
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".key"))
    except OSError:
        return None
    return tuple((n, _stamp_file(os.path.join(directory, n), stat)) for n in names)


class Reloader:
    """``poll()`` -> (acl, keys): either may be None (unchanged, or the
    change was invalid).  ``every_s`` 0 turns it off."""

    def __init__(self, acl_file: str, keys_dir: str, every_s: float, clock=time.monotonic, stat=os.stat):
        self.acl_file = acl_file
        self.keys_dir = keys_dir
        self.every_s = every_s
        self.clock = clock
        self.stat = stat
        self._next = clock() + every_s
        self._acl_seen = _stamp_file(acl_file, stat)
        self._keys_seen = _stamp_dir(keys_dir, stat)
        self.reloads = 0  # changes taken
        self.rejected = 0  # changes refused (the old rules stayed)

    def poll(self) -> tuple[Acl | None, dict[bytes, str] | None]:
        if not self.every_s or self.clock() < self._next:
            return None, None
        self._next = self.clock() + self.every_s
        acl = keys = None
        stamp = _stamp_file(self.acl_file, self.stat)
        if stamp != self._acl_seen:
            self._acl_seen = stamp
            try:
                with open(self.acl_file, "rb") as f:
                    acl = Acl.parse(f.read(), self.acl_file)
            except OSError as e:
                self._reject(f"acl_file {self.acl_file}: {e.strerror}")
            except AclError as e:
                self._reject(str(e))
            else:
                self.reloads += 1
                log.info("ACL reloaded from %s: %d rules", self.acl_file, len(acl.rules))
        stamp = _stamp_dir(self.keys_dir, self.stat)
        if stamp != self._keys_seen:
            self._keys_seen = stamp
            try:
                keys = authorized_keys(self.keys_dir)
            except KeyFileError as e:
                self._reject(str(e))
            else:
                self.reloads += 1
                log.info("trusted keys reloaded from %s: %s", self.keys_dir, ", ".join(sorted(keys.values())) or "none")
        return acl, keys

    def _reject(self, why: str) -> None:
        self.rejected += 1
        log.error("security: kept the rules in force, the edited ones are not valid: %s", why)
