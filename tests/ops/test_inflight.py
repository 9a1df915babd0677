"""llmrouter_inflight_requests{service}: the autoscaling signal counts a call from its start to its last
message, on a real gRPC server on loopback, and comes back to zero when the call ends or is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from llmrouter.auth import Authenticator
from llmrouter.interceptors import ServiceInterceptor

SERVICE = "inflight-test"


def inflight() -> float:
    return REGISTRY.get_sample_value("llmrouter_inflight_requests", {"service": SERVICE}) or 0.0


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    release = asyncio.Event()

    async def wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await release.wait()
        return b"done"

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"last"

    handlers = grpc.method_handlers_generic_handler(
        "test.Slow",
        {
            "Wait": grpc.unary_unary_rpc_method_handler(wait),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    srv = grpc.aio.server(interceptors=[ServiceInterceptor(SERVICE, Authenticator("none", {}, {}))])
    srv.add_generic_rpc_handlers([handlers])
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield f"127.0.0.1:{port}", release
    await srv.stop(0)


async def until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_unary_calls_count_while_served(server: tuple[str, asyncio.Event]) -> None:
    addr, release = server
    async with grpc.aio.insecure_channel(addr) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Slow/Wait")
        calls = [asyncio.ensure_future(call(b"")) for _ in range(3)]
        await until(lambda: inflight() == 3)
        release.set()
        assert await asyncio.gather(*calls) == [b"done"] * 3
    await until(lambda: inflight() == 0)


async def test_a_stream_counts_to_its_last_message_and_a_cancelled_one_stops_counting(
    server: tuple[str, asyncio.Event],
) -> None:
    addr, release = server
    async with grpc.aio.insecure_channel(addr) as channel:
        stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream("/test.Slow/Stream")
        call = stream(b"")
        assert await call.read() == b"first"
        await until(lambda: inflight() == 1)  # the first message is out, the stream still runs
        call.cancel()
        await until(lambda: inflight() == 0)
        finished = stream(b"")
        assert await finished.read() == b"first"
        release.set()
        assert await finished.read() == b"last"
    await until(lambda: inflight() == 0)
