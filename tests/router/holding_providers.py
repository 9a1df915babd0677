"""`python -m tests.router.holding_providers GRACE_S [MIN_PING_INTERVAL_MS]`: a providers service on the services'
own bootstrap (their gRPC server options, interceptor, drain on SIGTERM for GRACE_S) whose every generation, once its
handler runs, says `REACHED` on stdout and holds, as one whose upstream is generating does. MIN_PING_INTERVAL_MS lowers
the fastest keepalive pings it takes, for callers pinging faster than the services' clients (a test's)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from llmrouter import server
from llmrouter.server import Built, run_service
from llmrouter.settings import GrpcServiceSettings
from llmrouter.v1 import provider_pb2, provider_pb2_grpc


async def generating() -> None:
    print("REACHED", flush=True)
    await asyncio.Event().wait()


class Holding(provider_pb2_grpc.ProviderServicer):
    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        await generating()
        raise AssertionError("held")

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta="first")
        await generating()

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        messages = aiter(requests)
        await anext(messages)  # the request
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(messages)  # the router's word to send it
        await generating()


async def build() -> Built:
    add = provider_pb2_grpc.add_ProviderServicer_to_server
    return {"llmrouter.v1.Provider": lambda server: add(Holding(), server)}, []


if __name__ == "__main__":
    if len(sys.argv) > 2:
        floor = "grpc.http2.min_ping_interval_without_data_ms"
        server.SERVER_OPTIONS = [(k, int(sys.argv[2]) if k == floor else v) for k, v in server.SERVER_OPTIONS]
    run_service("providers", GrpcServiceSettings(port=0, auth="none", grace_seconds=float(sys.argv[1])), build)
