"""A provider batch is read after its model lost its batch price in the registry (the provider stopped offering it,
say): the batch ran, and was billed, all the same, and the router charges each line at the prices it was admitted
with. The poll was refused (BATCH_NOT_CREATED), so its lines waited for their window's end and were charged their
hold. The providers service on loopback, restarted with the new registry, in front of a fake OpenAI Batch API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import yaml

from llmrouter.server import CHANNEL_OPTIONS, start_server
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from services.providers import ProvidersSettings, build
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import registry


@asynccontextmanager
async def providers(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, batch_price: bool
) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    spec = registry(openai_fake.base_url, anthropic_fake.base_url)
    if batch_price:
        cheap = next(m for m in spec["models"] if m["name"] == "cheap")
        cheap.update(batch_input_usd_per_mtok="0.075", batch_output_usd_per_mtok="0.30")
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")
    registrations, closers = await build(settings)
    running = await start_server("providers", settings, registrations, closers)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=CHANNEL_OPTIONS[:2]) as channel:
            yield provider_pb2_grpc.ProviderStub(channel)
    finally:
        await running.stop(0)


async def test_a_batch_is_read_after_its_model_lost_its_batch_price(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    line = provider_pb2.GenerateRequest(
        model="cheap",
        request_id="line-1",
        messages=[common_pb2.ChatMessage(role="user", content="hello")],
        max_tokens=16,
    )
    async with providers(tmp_path, openai_fake, anthropic_fake, batch_price=True) as stub:
        submitted = await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model="cheap", requests=[line]))
    poll = provider_pb2.PollBatchRequest(model="cheap", batch_id=submitted.batch_id, request_ids=["line-1"])
    async with providers(tmp_path, openai_fake, anthropic_fake, batch_price=False) as stub:
        await stub.PollBatch(poll)  # in progress
        polled = await stub.PollBatch(poll)
    assert polled.ended
    (result,) = polled.results
    assert result.succeeded and result.response.usage.output_tokens > 0
