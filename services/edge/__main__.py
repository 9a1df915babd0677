"""Serve the edge with uvicorn (uvloop where installed); SIGTERM drains open requests before exit. Once it listens it
prints `READY edge <port>` on stdout, as the gRPC services do (llmrouter/server.py)."""

import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette

from llmrouter.channels import open_channel
from llmrouter.logs import setup_logging
from llmrouter.ports import listening_sockets, serve_metrics, setting_name
from llmrouter.settings import load_settings
from services.edge.app import create_app
from services.edge.protocol import edge_protocol
from services.edge.settings import EdgeSettings


class EdgeServer(uvicorn.Server):
    """uvicorn's server, telling the app as its shutdown begins, before its open requests drain (up to the grace
    period) and the app's own shutdown runs: the batch runner takes no batch from then on (app.state.stopping)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = getattr(getattr(self.config.app, "state", None), "stopping", None)
        if stopping is not None:
            stopping()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # listening: the line supervisors wait for (a SIGTERM sent on it drains)
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"READY edge {port}", flush=True)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, less its raising the signal again once shut down, which ended the process by it (status -15
        after a SIGTERM) when the drain had gone well: a drain on SIGTERM or SIGINT exits 0, as the gRPC services'
        does (llmrouter.server.run_service). A second SIGINT still forces the exit (uvicorn's handle_exit)."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def server_config(app: Starlette, settings: EdgeSettings) -> uvicorn.Config:
    """How the edge is served: in production and by the tests that start one in process."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # httptools, its requests bounded in size and time
        http=edge_protocol(
            settings.read_timeout_s, settings.write_timeout_s, settings.min_body_rate, settings.body_grace_s
        ),
        # No WebSocket: the edge serves none (OpenAI's Realtime API is not routed), and uvicorn's WebSocket protocol
        # refused a handshake with a bare 403; an upgrade asked for is now an HTTP request, a 404 in OpenAI's body.
        ws="none",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.grace_seconds),
    )


async def main(settings: EdgeSettings) -> None:
    # Bound here, not by uvicorn: a port in use ends the edge with one line naming EDGE_PORT, not a logged traceback.
    sockets = listening_sockets("edge", settings.host, settings.port, setting_name(settings, "port"))
    if settings.metrics_port:
        serve_metrics("edge", settings.host, settings.metrics_port, setting_name(settings, "metrics_port"))
    channel = open_channel(settings.router_addr, settings)
    server = EdgeServer(server_config(create_app(settings, channel), settings))
    try:
        await server.serve(sockets=sockets)
    finally:
        await channel.close()


if __name__ == "__main__":
    from llmrouter.server import run

    settings = load_settings(EdgeSettings)
    setup_logging("edge", settings.log_level)
    run(main(settings))
