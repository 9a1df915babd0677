"""Bootstrap shared by every gRPC service: an aio server with health checking, reflection, the service
interceptor, Prometheus metrics on their own port, and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmrouter.auth import Authenticator, parse_callers, parse_tokens
from llmrouter.interceptors import ServiceInterceptor
from llmrouter.logs import setup_logging
from llmrouter.overload import GRPC_PENDING_CALLS, OverloadInterceptor
from llmrouter.ports import GRPC_BIND_FAILED, GRPC_NO_PORT_SHARING, cannot_listen, serve_metrics, setting_name
from llmrouter.settings import GrpcServiceSettings

log = logging.getLogger("llmrouter.server")

# Full service name (e.g. "llmrouter.v1.Router") -> function adding its servicer to a server.
Registrations = Mapping[str, Callable[[grpc.aio.Server], None]]
Closer = Callable[[], Awaitable[None]]

# Messages up to 16 MiB: long prompts must be refused with a clear error by the policy, not by the transport.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
# The fastest pings a server takes while it sends nothing (gRPC's default is 5 min): faster ones, past gRPC's 2 strikes,
# get a GOAWAY too_many_pings that fails every call on the connection. A quarter of the clients' interval: timers slip.
MIN_PING_INTERVAL_MS = 5_000
MAX_RECONNECT_BACKOFF_MS = 2_000
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Spread calls over every address a (headless) Service resolves to, not one pod per client.
    ("grpc.lb_policy_name", "round_robin"),
    # A peer frozen or gone without a reset (SIGSTOP, a vanished node) holds a call until its deadline (minutes): a ping
    # every 20 s while calls are in flight, unanswered for 10 s, fails them UNAVAILABLE instead.
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # What times the ping out in gRPC 1.85, whose default is a minute (keepalive_timeout_ms alone is not heeded).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
    # Keep pinging through a long call with nothing sent (a unary generation): gRPC stops after 2 such pings otherwise.
    ("grpc.http2.max_pings_without_data", 0),
    # A peer back after an outage (restarted, redeployed on its address) is tried again within about 2 s (+-20 %: gRPC
    # jitters the capped wait): gRPC's own back-off grows 1.6 times per failed attempt up to 2 minutes, and every call
    # meanwhile failed UNAVAILABLE at once with the peer serving (10 s and more after a 30 s outage). The price: a
    # connection attempt per address every 2 s or so from each client pod while a peer is down.
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
]
# Servers close connections after a minute so clients re-resolve and find pods added by the autoscaler; calls
# in flight on a closing connection get a grace longer than the longest request to finish: the edge's deadline,
# EDGE_REQUEST_TIMEOUT_S (310 s), past the router's ROUTER_REQUEST_TIMEOUT_S (300 s).
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS[:2],
    GRPC_NO_PORT_SHARING,
    ("grpc.max_connection_age_ms", 60_000),
    ("grpc.max_connection_age_grace_ms", 320_000),
    # gRPC's default, named: each service's max_inflight_calls refuses calls with a reason before this queue fills.
    ("grpc.server.max_pending_requests", GRPC_PENDING_CALLS),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
]
# How long before a drain's grace ends a service's own cut (RunningServer.cut) ends the calls still running, before
# gRPC cancels them with no details: the time their charges take to land and their statuses to go (half a short grace).
CUT_MARGIN_S = 1.0


def cut_at(grace: float) -> float:
    return max(grace - CUT_MARGIN_S, grace / 2)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    services: list[str]
    closers: list[Closer] = field(default_factory=list)
    health_server: grpc.aio.Server | None = None  # plaintext, health checking only (for probes)
    stopping: bool = False
    # Ends the calls still running as the grace nears its end, each with a status of the service's (cut_at).
    cut: Callable[[], None] | None = None

    async def set_serving(self, serving: bool) -> None:
        """Report the services (un)able to serve, e.g. while a store they need is unreachable; once stopping,
        they stay NOT_SERVING. The server's own status ("") is untouched: the process is alive, and a liveness
        probe must not restart it for an outage elsewhere."""
        status: int = health_pb2.HealthCheckResponse.SERVING
        if not serving or self.stopping:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.services:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls (health NOT_SERVING), drain in-flight ones for `grace` seconds (those still running near
        its end cut by `cut`, when set), then run the closers in the order given: what uses the others first (the
        router's servicer lets its charges land before the money store, and its generations end before the providers
        channel, closes)."""
        self.stopping = True
        for name in [*self.services, ""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopped = asyncio.ensure_future(self.server.stop(grace))
        if self.cut is not None and grace:
            drained, _ = await asyncio.wait({stopped}, timeout=cut_at(grace))
            if not drained:
                self.cut()
        await stopped
        if self.health_server is not None:
            await self.health_server.stop(None)
        for close in self.closers:
            await close()


async def start_server(
    service: str,
    settings: GrpcServiceSettings,
    registrations: Registrations,
    closers: list[Closer] | None = None,
    on_started: Callable[[RunningServer], None] | None = None,
) -> RunningServer:
    """`on_started` is called once the server serves, e.g. to start work that reports its health."""
    tokens = parse_tokens(settings.token_entries())
    authenticator = Authenticator(settings.auth, parse_callers(settings.callers), tokens)
    # The overload check first: a call refused at the limit is neither authenticated nor parsed.
    overload = OverloadInterceptor(service, settings.max_inflight_calls)
    interceptors = [overload, ServiceInterceptor(service, authenticator)]
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    for add in registrations.values():
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(registrations)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = _bind(server, service, settings, "port", server_credentials(settings))
    health_server = None
    if settings.health_port is not None:
        # The same health servicer: a draining server says NOT_SERVING on both ports.
        health_server = grpc.aio.server(options=[GRPC_NO_PORT_SHARING])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        _bind(health_server, service, settings, "health_port", None)
        await health_server.start()
    await server.start()
    for name in [*names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(server, port, health_servicer, names, closers or [], health_server)
    if on_started is not None:
        on_started(running)
    return running


def server_credentials(settings: GrpcServiceSettings) -> grpc.ServerCredentials | None:
    """TLS when the service has a certificate; client certificates required (and verified against ca.crt)
    in mtls mode. None: plaintext."""
    if settings.tls_dir is None:
        return None
    return grpc.ssl_server_credentials(
        [((settings.tls_dir / "tls.key").read_bytes(), (settings.tls_dir / "tls.crt").read_bytes())],
        root_certificates=(settings.tls_dir / "ca.crt").read_bytes(),
        require_client_auth=settings.auth == "mtls",
    )


def _bind(
    server: grpc.aio.Server,
    service: str,
    settings: GrpcServiceSettings,
    port_field: str,
    credentials: grpc.ServerCredentials | None,
) -> int:
    """Listen on the port `port_field` of the settings names, or exit with one line saying which setting moves it."""
    address = f"{settings.host}:{getattr(settings, port_field)}"
    try:
        if credentials is None:
            bound = int(server.add_insecure_port(address))
        else:
            bound = int(server.add_secure_port(address, credentials))
    except RuntimeError:  # grpc's "Failed to bind to address"
        bound = 0
    if bound == 0:
        raise cannot_listen(service, address, setting_name(settings, port_field), GRPC_BIND_FAILED)
    return bound


# What a service's build() returns: its servicers, what closes them, optionally a hook run once serving.
Built = tuple[Registrations, list[Closer]] | tuple[Registrations, list[Closer], Callable[[RunningServer], None]]


def run_service(
    service: str,
    settings: GrpcServiceSettings,
    build: Callable[[], Awaitable[Built]],
) -> None:
    """Entry point of `python -m services.<name>`: serve until SIGTERM or SIGINT, then drain."""
    setup_logging(service, settings.log_level)

    async def main() -> None:
        if settings.metrics_port:  # first: a port taken ends the process before it has anything to close
            serve_metrics(service, settings.host, settings.metrics_port, setting_name(settings, "metrics_port"))
        running = await start_server(service, settings, *await build())
        log.info("serving", extra={"port": running.port, "metrics_port": settings.metrics_port, "auth": settings.auth})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # One line on stdout that supervisors and tests can wait for: a SIGTERM sent on it drains, as any later one.
        print(f"READY {service} {running.port}", flush=True)
        await stop.wait()
        log.info("draining", extra={"grace_seconds": settings.grace_seconds})
        await running.stop(settings.grace_seconds)
        log.info("stopped")

    run(main())


def run(coro: Awaitable[None]) -> None:
    """Run on uvloop where it is installed (the fastest loop for grpc.aio here), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]
