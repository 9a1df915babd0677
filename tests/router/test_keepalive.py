"""A peer frozen mid-call (SIGSTOP; a node gone with no reset) fails the call UNAVAILABLE within the channels' keepalive
time and timeout, not at the call's deadline minutes later; and a long call with nothing sent is not cut by the
server's ping policy (GOAWAY too_many_pings) while its caller's keepalive pings it."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from llmrouter import channels
from llmrouter.channels import open_channel
from llmrouter.server import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, MIN_PING_INTERVAL_MS, SERVER_OPTIONS, start_server
from llmrouter.settings import GrpcServiceSettings, ServiceSettings
from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.router.test_providers_gone_mid_call import holding_providers

SETTINGS = ServiceSettings(call_token=SecretStr("a-token"))
# The test's channels ping every second and give up a second later: the product's 20 s + 10 s, shortened (where the
# product sets them: none added, so a channel without the product's keepalive has none here either).
SHORT = {"grpc.keepalive_time_ms": 1_000, "grpc.keepalive_timeout_ms": 1_000, "grpc.http2.ping_timeout_ms": 1_000}
MARGIN_S = 5.0


def test_every_internal_channel_pings_while_calls_are_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[dict[str, Any]] = []

    def recording(*args: Any, **kwargs: Any) -> None:
        # Recorded, never opened: an aio channel needs an event loop, which a plain test may lack (its order decides).
        given.append(dict(kwargs["options"]))

    for name in ("insecure_channel", "secure_channel"):
        monkeypatch.setattr(grpc.aio, name, recording)
    open_channel("127.0.0.1:1", SETTINGS)
    options = given[0]
    assert options["grpc.keepalive_time_ms"] == KEEPALIVE_TIME_MS
    assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == KEEPALIVE_TIMEOUT_MS
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.http2.max_pings_without_data"] == 0
    # Servers take those pings with room to spare (gRPC's default, 5 min apart, would GOAWAY a silent call's fourth).
    server_options: dict[str, Any] = dict(SERVER_OPTIONS)
    assert server_options["grpc.http2.min_ping_interval_without_data_ms"] < KEEPALIVE_TIME_MS


# Frozen at once, or after the call has been silent for three pings (past which gRPC's default, 2 pings without data,
# would leave the call unwatched: a ping a minute at most).
@pytest.mark.parametrize(("streamed", "silent_s"), [(False, 0.0), (True, 0.0), (False, 3.5)])
async def test_a_frozen_peer_fails_the_call_unavailable_within_keepalive(
    monkeypatch: pytest.MonkeyPatch, streamed: bool, silent_s: float
) -> None:
    monkeypatch.setattr(channels, "CHANNEL_OPTIONS", [(k, SHORT.get(k, v)) for k, v in channels.CHANNEL_OPTIONS])
    floor_ms = str(SHORT["grpc.keepalive_time_ms"] // 2)  # the test's pings taken, as the product's are (below)
    async with (
        holding_providers(floor_ms) as (process, port),
        open_channel(f"127.0.0.1:{port}", SETTINGS) as channel,
    ):
        stub = provider_pb2_grpc.ProviderStub(channel)
        request = provider_pb2.GenerateRequest(model="m")

        async def call() -> None:
            if streamed:
                async for _ in stub.GenerateStream(request, timeout=300):
                    pass
            else:
                await stub.Generate(request, timeout=300)

        calling = asyncio.create_task(call())
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"REACHED\n"
        await asyncio.sleep(silent_s)  # the behaviour under test: a call silent that long
        assert not calling.done(), calling
        process.send_signal(signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            limit_s = (SHORT["grpc.keepalive_time_ms"] + SHORT["grpc.http2.ping_timeout_ms"]) / 1000 + MARGIN_S
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await asyncio.wait_for(calling, limit_s)
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value
            assert time.monotonic() - frozen_at < limit_s
        finally:
            process.send_signal(signal.SIGCONT)


class Silent(provider_pb2_grpc.ProviderServicer):
    """Answers after `silent_s` with nothing sent before: a long unary generation."""

    def __init__(self, silent_s: float) -> None:
        self.silent_s = silent_s

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        await asyncio.sleep(self.silent_s)  # the behaviour under test: a call that long, with no data sent
        return provider_pb2.GenerateResponse(content="done")


async def test_a_long_silent_call_is_not_cut_for_its_keepalive_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pings at the fastest the product's server options take, for longer than gRPC's default policy (5 min apart, 2
    strikes) lets pass: the fourth ping would get GOAWAY too_many_pings, failing the call in flight."""
    ping_ms = MIN_PING_INTERVAL_MS
    monkeypatch.setattr(
        channels,
        "CHANNEL_OPTIONS",
        [(k, ping_ms if k == "grpc.keepalive_time_ms" else v) for k, v in channels.CHANNEL_OPTIONS],
    )
    silent_s = 4 * ping_ms / 1000 + 2
    add = provider_pb2_grpc.add_ProviderServicer_to_server
    running = await start_server(
        "providers",
        GrpcServiceSettings(port=0, auth="none"),
        {"llmrouter.v1.Provider": lambda server: add(Silent(silent_s), server)},
    )
    try:
        async with open_channel(f"127.0.0.1:{running.port}", ServiceSettings()) as channel:
            answer = await provider_pb2_grpc.ProviderStub(channel).Generate(
                provider_pb2.GenerateRequest(model="m"), timeout=silent_s + 30
            )
        assert answer.content == "done"
    finally:
        await running.stop(None)
