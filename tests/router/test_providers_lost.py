"""The router's call to the providers service breaking in transit (the providers process dies or drains past its
grace mid-call): the providers may have sent the request upstream, which generates and bills it, so the attempt
is owed at its worst case, as an upstream connection lost after sending is. A providers service the router never
reached cost nothing. Real gRPC servers on loopback; the router's serving over the in-process store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from llmrouter.channels import open_channel
from llmrouter.errors import ServiceError
from llmrouter.server import CHANNEL_OPTIONS
from llmrouter.settings import ServiceSettings
from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from services.router.serving import Serving, StreamState, worst_usd
from tests.router.servicer_kit import NoDeadline
from tests.router.test_admission import REGISTRY, request, routed


class Generating(provider_pb2_grpc.ProviderServicer):
    """A providers service in the middle of a generation: the upstream has the request."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.called.set()
        await asyncio.sleep(30)
        raise AssertionError("stopped before")

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        self.called.set()
        await asyncio.sleep(30)
        yield provider_pb2.GenerateChunk(delta="never")


async def start(servicer: Generating) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    provider_pb2_grpc.add_ProviderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_providers_call_cut_in_transit_is_owed_at_its_worst_case(streamed: bool) -> None:
    servicer = Generating()
    server, port = await start(servicer)
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        serving = Serving(provider_pb2_grpc.ProviderStub(channel), gate)

        async def serve() -> None:
            if streamed:
                async for _ in serving.generate_stream(r, NoDeadline(), StreamState(r.plan.order[0].model)):
                    pass
            else:
                await serving.generate(r, NoDeadline())

        serving_task = asyncio.create_task(serve())
        await servicer.called.wait()
        await server.stop(0)  # the providers process goes mid-call; the fallback finds no server to connect to
        with pytest.raises(ServiceError) as failed:
            await serving_task
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    cheap = r.plan.order[0].model
    assert r.owed == worst_usd(r, cheap)  # the cut attempt at its worst case; the unsent fallback, nothing


async def test_a_providers_service_never_reached_costs_nothing() -> None:
    server, port = await start(Generating())
    await server.stop(0)  # nothing listens there any more
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        serving = Serving(provider_pb2_grpc.ProviderStub(channel), gate)
        with pytest.raises(ServiceError) as failed:
            await serving.generate(r, NoDeadline())
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert r.owed == 0


async def test_a_providers_service_gone_after_the_channel_connected_costs_nothing() -> None:
    """The router's channel (its production options: round-robin over the service's addresses) was connected, then
    the providers service went away before the call: gRPC fails the call without sending it (its connections all
    failing), so it bills nothing, and neither does the fallback that finds it gone too."""
    server, port = await start(Generating())
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        await server.stop(0)
        serving = Serving(provider_pb2_grpc.ProviderStub(channel), gate)
        with pytest.raises(ServiceError) as failed:
            await serving.generate(r, NoDeadline())
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert r.owed == 0, failed.value.message


async def test_a_cued_stream_to_a_providers_service_gone_falls_back_and_costs_nothing() -> None:
    """As above, streamed over the router's channel with its call token: gRPC ends the call before its request is
    written, and the write raised InvalidStateError (interceptors write from a task of their own), which escaped as
    an internal error: no fallback, and the caller told a 500 for a providers service gone."""
    server, port = await start(Generating())
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    channel = open_channel(f"127.0.0.1:{port}", ServiceSettings(call_token=SecretStr("a-token")))
    await asyncio.wait_for(channel.channel_ready(), 10)
    await server.stop(0)
    serving = Serving(provider_pb2_grpc.ProviderStub(channel), gate)
    with pytest.raises(ServiceError) as failed:
        async for _ in serving.generate_stream(r, NoDeadline(), StreamState(r.plan.order[0].model)):
            pass
    await channel.close()
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert r.owed == 0, failed.value.message


class DeadlineGone:
    """A caller whose deadline passed before the first attempt: a unary call's generation runs on, shielded, after
    its caller's deadline (a cache lookup that took the time, a slow admission)."""

    def time_remaining(self) -> float | None:
        return 0.0


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_first_attempt_with_no_time_left_is_neither_made_nor_charged(streamed: bool) -> None:
    """As a fallback with no time left is not made: the call would fail before reaching the providers, yet, its
    outcome looking unknown (DEADLINE_EXCEEDED), be charged its worst case."""
    servicer = Generating()
    server, port = await start(servicer)
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            serving = Serving(provider_pb2_grpc.ProviderStub(channel), gate)
            with pytest.raises(ServiceError) as failed:
                if streamed:
                    async for _ in serving.generate_stream(r, DeadlineGone(), StreamState(r.plan.order[0].model)):
                        pass
                else:
                    await serving.generate(r, DeadlineGone())
    finally:
        await server.stop(0)
    assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert r.owed == 0 and not servicer.called.is_set()
