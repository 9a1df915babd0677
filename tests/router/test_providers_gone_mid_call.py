"""A providers process that goes while a handler of its holds the router's call (killed, or drained past its grace on
SIGTERM) fails the call UNAVAILABLE, never CANCELLED: the router owes the attempt's worst case (its upstream may be
generating), which a call taken for one the providers' gRPC server shed (ServiceError.shed: CANCELLED without ErrorInfo,
charged nothing) would not be. Unary and cued streams, over the router's own channel (its options, its call token's
interceptors) to a real providers process on the services' own bootstrap (tests/router/holding_providers.py)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from llmrouter.channels import open_channel
from llmrouter.errors import ServiceError
from llmrouter.settings import ServiceSettings
from llmrouter.v1 import provider_pb2_grpc
from services.router.serving import Serving, StreamState, worst_usd
from tests.router.servicer_kit import NoDeadline
from tests.router.test_admission import REGISTRY, request, routed


@asynccontextmanager
async def holding_providers(*options: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The providers process, draining for no time on SIGTERM, and its port (`options`: after its grace, in
    tests/router/holding_providers.py)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.router.holding_providers", "0", *options, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        ready = (await asyncio.wait_for(process.stdout.readline(), 30)).split()
        assert ready[:2] == [b"READY", b"providers"], ready
        yield process, int(ready[2])
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def gone(process: asyncio.subprocess.Process, channel: grpc.aio.Channel) -> None:
    """Returns once the providers' process is reaped (its sockets closed with it) and the channel has left the
    connection to it: a call made now finds no server to connect to."""
    await process.wait()
    state = channel.get_state()
    while state is grpc.ChannelConnectivity.READY:
        await channel.wait_for_state_change(state)
        state = channel.get_state()


def fallback_once_gone(
    stub: provider_pb2_grpc.ProviderStub, process: asyncio.subprocess.Process, channel: grpc.aio.Channel
) -> provider_pb2_grpc.ProviderStub:
    """The stub, its unary fallback held until the providers are gone. Made at once, gRPC may write it to the dying
    connection (the channel still READY after the first call's "Socket closed"), failing it "Stream removed (sendmsg:
    Broken pipe)": the transport's words for every call on it, the one whose handler ran among them, so rightly owed
    its worst case. A streamed fallback needs no wait: failed before the word to send, it is owed nothing."""
    first_call, calls = stub.Generate, 0

    async def generate(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gone(process, channel)
        return await first_call(*args, **kwargs)

    stub.Generate = generate
    return stub


@pytest.mark.parametrize("ends", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_providers_process_gone_mid_call_is_owed_the_attempts_worst_case(
    streamed: bool, ends: signal.Signals
) -> None:
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    async with holding_providers() as (process, port):
        channel = open_channel(f"127.0.0.1:{port}", ServiceSettings(call_token=SecretStr("a-token")))
        serving = Serving(fallback_once_gone(provider_pb2_grpc.ProviderStub(channel), process, channel), gate)

        async def serve() -> None:
            if streamed:
                async for _ in serving.generate_stream(r, NoDeadline(), StreamState(r.plan.order[0].model)):
                    pass
            else:
                await serving.generate(r, NoDeadline())

        serving_task = asyncio.create_task(serve())
        assert process.stdout is not None
        reached = asyncio.ensure_future(process.stdout.readline())
        await asyncio.wait([reached, serving_task], return_when=asyncio.FIRST_COMPLETED)
        assert reached.done() and reached.result() == b"REACHED\n", serving_task
        process.send_signal(ends)  # its handler holds the call; the fallback finds no server to connect to
        with pytest.raises(ServiceError) as failed:
            await serving_task
        await channel.close()
    assert not failed.value.shed, failed.value.message
    # The cut attempt at its worst case; the unsent fallback, nothing.
    assert r.owed == worst_usd(r, r.plan.order[0].model)
