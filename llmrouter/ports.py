"""Listening on a port each service owns alone: no SO_REUSEPORT (two stacks started on one machine would share ports,
each taking the other's requests), and a port that cannot be taken ends the process with one line naming the address
and the setting that moves it, not a traceback."""

from __future__ import annotations

import errno
import socket

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
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


def listening_socket(service: str, host: str, port: int, setting: str) -> socket.socket:
    """A TCP socket bound and listening (SO_REUSEADDR, as uvicorn binds, but not SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        raise cannot_listen(service, f"{host}:{port}", setting, reason(error)) from None


def serve_metrics(service: str, host: str, port: int, setting: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Prometheus' HTTP server, in a thread."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise cannot_listen(service, f"{host}:{port}", setting, reason(error)) from None
