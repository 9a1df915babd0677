"""Listening on a port each service owns alone: no SO_REUSEPORT (two stacks started on one machine would share ports,
each taking the other's requests), and a port that cannot be taken ends the process with one line naming the address
and the setting that moves it, not a traceback."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.types import WSGIApplication

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from pydantic_settings import BaseSettings

# grpc-core turns SO_REUSEPORT on by default: a second server on a port in use then binds it and takes half its calls.
GRPC_NO_PORT_SHARING = ("grpc.so_reuseport", 0)
# What grpc says of a failed bind: nothing more precise than that.
GRPC_BIND_FAILED = "in use by another process, or not an address of this host"


def setting_name(settings: BaseSettings, field: str) -> str:
    """The environment variable behind a field, as an operator sets it (`ROUTER_PORT`)."""
    return f"{settings.model_config.get('env_prefix', '')}{field}".upper()


def cannot_listen(service: str, address: str, setting: str, reason: str) -> SystemExit:
    """Exit status 1 with this one line on stderr."""
    return SystemExit(f"{service}: cannot listen on {address} ({reason}): set {setting} to a free port")


def reason(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "in use by another process"
    return error.strerror or str(error)


def host_addresses(host: str) -> list[tuple[socket.AddressFamily, str]]:
    """Every address `host` names, each once, in the resolver's order. localhost names the loopback of both families
    (RFC 6761), whatever /etc/hosts says: one that maps it to 127.0.0.1 alone left IPv6 callers of localhost (::1 first,
    as most clients try it) refused."""
    if host == "localhost":
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    # Passive: no host ("") is every address of this machine, of each family.
    found = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list(dict.fromkeys((family, str(address[0])) for family, _, _, _, address in found))


def shown(address: str, port: int) -> str:
    """An address and port as written in a URL."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# How many ports a listener on port 0 draws before giving up: each is taken on a later address only by chance.
PORT_DRAWS = 8


def listening_sockets(service: str, host: str, port: int, setting: str) -> list[socket.socket]:
    """TCP sockets bound and listening on every address `host` names (host_addresses), on one port: `port`, or when
    it is 0 the one the first address was given (another draw when that port is taken on a later address). SO_REUSEADDR,
    as uvicorn binds, but not SO_REUSEPORT; an IPv6 socket takes IPv6 alone (IPV6_V6ONLY), its IPv4 twin bound beside
    it. A name's address this machine does not have (::1 with IPv6 off) is left out; an address written as the host,
    or in use, ends the process (cannot_listen)."""
    try:
        addresses = host_addresses(host)
    except OSError as error:
        found = f"no address found for {host!r}: {reason(error)}"
        raise SystemExit(f"{service}: cannot listen on {host}:{port} ({found})") from None
    try:
        sockets = bound_on_a_free_port(host, addresses, (0,) * PORT_DRAWS if port == 0 else (port,))
    except PortTaken as taken:
        if taken.later and port == 0:
            drawn = f"{PORT_DRAWS} free ports drawn were each taken on another of its addresses"
            raise SystemExit(f"{service}: cannot listen on {host} ({drawn}): set {setting} to a free port") from None
        raise cannot_listen(service, shown(taken.address, taken.port), setting, reason(taken.error)) from None
    if not sockets:
        raise SystemExit(f"{service}: cannot listen on {host}:{port} (none of its addresses is this machine's)")
    return sockets


class PortTaken(Exception):
    """An address that could not be bound: the error, and whether a socket was bound before it (on the same port)."""

    def __init__(self, address: str, port: int, error: OSError, later: bool) -> None:
        super().__init__(address)
        self.address, self.port, self.error, self.later = address, port, error, later


def bound_on_a_free_port(
    host: str, addresses: list[tuple[socket.AddressFamily, str]], ports: Sequence[int]
) -> list[socket.socket]:
    """bound_on_one_port on the first of `ports` (0: a port the first address draws) that no other process holds on a
    later address; the last one's PortTaken when none is."""
    for index, port in enumerate(ports):
        try:
            return bound_on_one_port(host, addresses, port)
        except PortTaken as taken:
            if not taken.later or index == len(ports) - 1:
                raise
    raise ValueError("no port to try")


def bound_on_one_port(host: str, addresses: list[tuple[socket.AddressFamily, str]], port: int) -> list[socket.socket]:
    """One listening socket per address, all on `port` (0: the first one's); closed again, every one, on a failure."""
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            try:
                sockets.append(socket.create_server((address, port), family=family, backlog=2048))
            except OSError as error:
                if address != host and error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue
                later = bool(sockets) and error.errno == errno.EADDRINUSE
                raise PortTaken(address, port, error, later) from None
            port = sockets[0].getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve_metrics(service: str, host: str, port: int, setting: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Prometheus' HTTP server on every address `host` names, as the service's own ports listen (listening_sockets),
    each socket served in a thread. prometheus_client's start_http_server bound only the address a name
    resolved to first: localhost's metrics were on 127.0.0.1 alone, refused to a scraper trying ::1."""
    app = make_wsgi_app(registry)
    for sock in listening_sockets(service, host, port, setting):
        server = MetricsServer(sock, app)
        threading.Thread(target=server.serve_forever, name=f"metrics {sock.getsockname()[0]}", daemon=True).start()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """A scrape is not logged (to stderr, in no log format), as prometheus_client's own server logs none."""


class MetricsServer(ThreadingWSGIServer):
    """prometheus_client's server (a thread a scrape) on a socket listening already."""

    def __init__(self, sock: socket.socket, app: WSGIApplication) -> None:
        address, port = sock.getsockname()[:2]
        super().__init__((address, port), QuietHandler, bind_and_activate=False)
        self.socket.close()  # its own, never bound: `sock` serves instead
        self.socket, self.address_family, self.server_address = sock, sock.family, sock.getsockname()
        # What HTTPServer.server_bind would set, but the address as it is (no reverse lookup), and WSGIServer's environ.
        self.server_name, self.server_port = address, port
        self.setup_environ()
        self.set_app(app)
