"""CURVE key pairs on disk, in ZeroMQ's certificate format (``zmq.auth``).

``generate(DIR, NAME)`` writes ``DIR/NAME.key`` (the public certificate,
to hand out) and ``DIR/NAME.key_secret`` (the key pair, owner-only 0600).
A broker trusts the public certificates in its ``authorized_keys_dir``; a
key's principal is its file name without ``.key``.
"""

from __future__ import annotations

import glob
import os
import re

import zmq.auth

from hpbroker.sockets import load_certificate

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class KeyFileError(ValueError):
    """A key file or directory that cannot be used; one line naming it."""


def generate(directory: str, name: str, *, force: bool = False) -> tuple[str, str]:
    """Write NAME.key and NAME.key_secret (0600) in ``directory`` (made
    0700 if missing); -> their paths.  Refuses to overwrite unless ``force``."""
    if not NAME.match(name):
        raise KeyFileError(f"bad key name {name!r}: letters, digits, '.', '_' and '-', not starting with '.' or '-'")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public, secret = (os.path.join(directory, name + ext) for ext in (".key", ".key_secret"))
    for p in (public, secret):
        if os.path.exists(p) and not force:
            raise KeyFileError(f"{p} exists (remove it first, or pass --force)")
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        written = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(written[0], 0o644)  # the public certificate is meant to be handed out
    return written


def authorized_keys(directory: str) -> dict[bytes, str]:
    """{Z85 public key: principal} of every ``*.key`` in ``directory``.  A
    key under two names is an error (which principal would it be?)."""
    if not os.path.isdir(directory):
        raise KeyFileError(f"authorized_keys_dir {directory} is not a directory")
    out: dict[bytes, str] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*.key"))):
        name = os.path.basename(path)[:-len(".key")]
        try:
            public, _ = load_certificate(path)
        except ValueError as e:
            raise KeyFileError(str(e)) from None
        if public in out:
            raise KeyFileError(f"{path}: the same public key as {out[public]}.key; one key, one principal")
        out[public] = name
    return out
