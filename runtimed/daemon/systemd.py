"""The systemd notification protocol: a datagram to ``$NOTIFY_SOCKET`` (``Type=notify``).

No library needed: ``READY=1`` once listening, ``STOPPING=1`` when shutting down, ``STATUS=…``
for ``systemctl status``. Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("runtimed.systemd")


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` lines to the service manager; whether a manager was there to hear."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode("utf-8"))
    except OSError as error:
        log.warning("could not notify the service manager at %s: %s", address.lstrip("\0"), error)
        return False
    return True
