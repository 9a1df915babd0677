"""What loopback this machine has: tests of both address families check ::1 only where it exists, and say so."""

from __future__ import annotations

import socket

from llmrouter.ports import listening_sockets


def has_ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


def free_loopback_port() -> int:
    """A port free on each loopback this machine has (127.0.0.1 and ::1), as a service on localhost needs."""
    sockets = listening_sockets("test", "localhost", 0, "-")
    port = int(sockets[0].getsockname()[1])
    for sock in sockets:
        sock.close()
    return port
