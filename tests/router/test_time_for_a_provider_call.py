"""The router makes no provider call that the providers would refuse for want of time: MIN_CALL_S, the least of
the request's time with which it calls, leaves the providers, past their margin (llmrouter.deadlines) and once the call
reached them, the time to send. A call made with less was, before the providers refused it, sent with no time to reach
its upstream and charged its worst case as an unknown outcome; refused now, it is charged nothing but is a call for
nothing. The providers' dispatcher itself, exactly, then the router's serving over the real providers service on
loopback, both before the OpenAI wire-format fake, which never answers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import yaml

from llmrouter.deadlines import REACH_PROVIDERS_S
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.server import start_server
from llmrouter.v1 import provider_pb2_grpc
from services.providers import ProvidersSettings, build
from services.providers.catalog import build_catalog
from services.providers.service import upstream_request
from services.router.admission import Admission
from services.router.routed import Routed
from services.router.serving import MIN_CALL_S, Serving, StreamState, generate_request, worst_usd
from tests.fakes import FakeOpenAI, Fault
from tests.router.test_admission import REGISTRY, request, routed
from tests.waiting import eventually


class Deadline:
    """A gRPC context whose caller's deadline is `seconds` from now."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def time_remaining(self) -> float:
        return self.end - time.perf_counter()


def providers_registry(upstream: FakeOpenAI) -> Registry:
    """test_admission.REGISTRY, its provider being `upstream`, never retried."""
    spec = REGISTRY.model_dump(mode="json", exclude_none=True)
    spec["providers"]["p"].update(base_url=upstream.base_url, max_retries=0)
    return Registry.model_validate(spec)


def providers_settings(upstream: FakeOpenAI, tmp_path: Path) -> ProvidersSettings:
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(providers_registry(upstream).model_dump(mode="json", exclude_none=True)))
    return ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")


@asynccontextmanager
async def providers_before(upstream: FakeOpenAI, tmp_path: Path) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    """The real providers service on loopback, before `upstream`."""
    settings = providers_settings(upstream, tmp_path)
    running = await start_server("providers", settings, *await build(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield provider_pb2_grpc.ProviderStub(channel)
    finally:
        await running.stop(0)


async def routed_and_admitted() -> tuple[Admission, Routed]:
    """A request routed to the cheap model (the strong one behind it), admitted."""
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    return gate, r


async def serve(serving: Serving, r: Routed, time_left: float, streamed: bool) -> ServiceError:
    """Serve `r` with `time_left` of its caller's deadline: the failure it ends with."""
    context = Deadline(time_left)
    with pytest.raises(ServiceError) as failed:
        if streamed:
            async for _ in serving.generate_stream(r, context, StreamState(r.plan.order[0].model)):
                pass
        else:
            await serving.generate(r, context)
    return failed.value


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_the_least_time_a_routers_call_arrives_with_lets_the_providers_send_it(
    tmp_path: Path, streamed: bool
) -> None:
    """Exact, with no network between: a call the router made with MIN_CALL_S left, arrived within
    REACH_PROVIDERS_S (10 ms inside it), is sent by the providers (it then times out unanswered) rather than refused
    unsent."""
    arrived_with = MIN_CALL_S - REACH_PROVIDERS_S + 0.01
    gate, r = await routed_and_admitted()
    with FakeOpenAI() as upstream:
        upstream.enqueue(Fault.hang())
        catalog = await build_catalog(providers_registry(upstream), providers_settings(upstream, tmp_path))
        try:
            model, dispatcher = catalog.resolve("cheap")
            call = upstream_request(model, generate_request(r, model, gate.end_users))
            with pytest.raises(ServiceError) as failed:
                if streamed:
                    async for _ in dispatcher.generate_stream(model, call, arrived_with):
                        pass
                else:
                    await dispatcher.generate(model, call, arrived_with)
        finally:
            await catalog.aclose()
    assert failed.value.metadata.get("sent") != "false", failed.value.message
    assert (failed.value.code, failed.value.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_a_call_made_with_little_time_left_reaches_its_upstream(tmp_path: Path, streamed: bool) -> None:
    gate, r = await routed_and_admitted()
    with FakeOpenAI() as upstream:
        upstream.enqueue(Fault.hang())
        async with providers_before(upstream, tmp_path) as providers:
            # 0.1 s over the least: room for a loaded machine's delays between the services and the word to send.
            failed = await serve(Serving(providers, gate), r, MIN_CALL_S + 0.1, streamed)
        await eventually(lambda: upstream.requests, "the upstream has the request", timeout_s=5)
    # Sent, it timed out at the providers' deadline, which said so in time; no time was left for a fallback.
    assert (failed.code, failed.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    assert failed.metadata.get("sent") != "false", "refused unsent: the router called with too little time"
    assert len(upstream.requests) == 1 and r.owed == worst_usd(r, r.plan.order[0].model)


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_no_call_is_made_with_less(tmp_path: Path, streamed: bool) -> None:
    gate, r = await routed_and_admitted()
    with FakeOpenAI() as upstream:
        async with providers_before(upstream, tmp_path) as providers:
            failed = await serve(Serving(providers, gate), r, MIN_CALL_S - 0.01, streamed)
    assert failed.message == "no time left for a provider call; none was made"
    assert upstream.connections == 0 and r.owed == 0
