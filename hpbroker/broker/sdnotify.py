"""systemd's sd_notify, the ten lines of it the broker needs.

Under ``Type=notify`` (tools/hpbroker.service) systemd passes a datagram
socket in ``$NOTIFY_SOCKET``; the supervisor sends ``READY=1`` once every
writer has recovered and every acceptor serves, and ``STOPPING=1`` when it
starts its ordered shutdown.  Without the variable this does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, env: dict | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd; False when not under systemd."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(state.encode(), addr)
        except OSError:
            return False
    return True
