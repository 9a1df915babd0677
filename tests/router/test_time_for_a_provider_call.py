"""The router makes no provider call that the providers would refuse for want of time: MIN_FALLBACK_S, the least of
the request's time with which it calls, leaves the providers, past their margin (llmrouter.deadlines), the time to
send. A call made with less was, before the providers refused it, sent with no time to reach its upstream and charged
its worst case as an unknown outcome; refused now, it is charged nothing but is a call for nothing. The router's
serving over the real providers service on loopback, before the OpenAI wire-format fake, which never answers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import yaml

from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.server import start_server
from llmrouter.v1 import provider_pb2_grpc
from services.providers import ProvidersSettings, build
from services.router.routed import Routed
from services.router.serving import MIN_FALLBACK_S, Serving, StreamState, worst_usd
from tests.fakes import FakeOpenAI, Fault
from tests.router.test_admission import REGISTRY, request, routed
from tests.waiting import eventually


class Deadline:
    """A gRPC context whose caller's deadline is `seconds` from now."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def time_remaining(self) -> float:
        return self.end - time.perf_counter()


@asynccontextmanager
async def providers_before(upstream: FakeOpenAI, tmp_path: Path) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    """The real providers service, test_admission.REGISTRY's provider being `upstream`, never retried."""
    spec = REGISTRY.model_dump(mode="json", exclude_none=True)
    spec["providers"]["p"].update(base_url=upstream.base_url, max_retries=0)
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(Registry.model_validate(spec).model_dump(mode="json", exclude_none=True)))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")
    running = await start_server("providers", settings, *await build(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield provider_pb2_grpc.ProviderStub(channel)
    finally:
        await running.stop(0)


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
async def test_a_call_made_with_the_least_time_left_reaches_its_upstream(tmp_path: Path, streamed: bool) -> None:
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    with FakeOpenAI() as upstream:
        upstream.enqueue(Fault.hang())
        async with providers_before(upstream, tmp_path) as providers:
            # A few ms over the least: what the router takes from its caller's deadline to its check.
            failed = await serve(Serving(providers, gate), r, MIN_FALLBACK_S + 0.01, streamed)
        await eventually(lambda: upstream.requests, "the upstream has the request", timeout_s=5)
    # Sent, it timed out at the providers' deadline, which said so in time; no time was left for a fallback.
    assert (failed.code, failed.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    assert failed.metadata.get("sent") != "false", "refused unsent: the router called with too little time"
    assert len(upstream.requests) == 1 and r.owed == worst_usd(r, r.plan.order[0].model)


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_no_call_is_made_with_less(tmp_path: Path, streamed: bool) -> None:
    gate, r = await routed(request(max_tokens=50))
    r.registry, r.escalation = REGISTRY, "off"
    await gate.admit(r)
    with FakeOpenAI() as upstream:
        async with providers_before(upstream, tmp_path) as providers:
            failed = await serve(Serving(providers, gate), r, MIN_FALLBACK_S - 0.01, streamed)
    assert failed.message == "no time left for a provider call; none was made"
    assert upstream.connections == 0 and r.owed == 0
