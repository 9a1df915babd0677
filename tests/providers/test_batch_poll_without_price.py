"""A provider batch is read after its model lost its batch price in the registry (the provider stopped offering it,
say): the batch ran, and was billed, all the same, and the router charges each line at the prices it was admitted
with. The poll was refused (BATCH_NOT_CREATED), so its lines waited for their window's end and were charged their
hold. The providers service on loopback, restarted with the new registry, in front of a fake OpenAI Batch API."""

from __future__ import annotations

from pathlib import Path

from llmrouter.v1 import common_pb2, provider_pb2
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import model_entry, providers_service

BATCH_PRICES = {"batch_input_usd_per_mtok": "0.075", "batch_output_usd_per_mtok": "0.30"}


def batchable(batch_price: bool) -> dict:
    """A model of the fake OpenAI provider, with its batch price or without it."""
    return model_entry("batchable", "fakeai", "economy", "0.15", "0.60", **(BATCH_PRICES if batch_price else {}))


async def test_a_batch_is_read_after_its_model_lost_its_batch_price(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    line = provider_pb2.GenerateRequest(
        model="batchable",
        request_id="line-1",
        messages=[common_pb2.ChatMessage(role="user", content="hello")],
        max_tokens=16,
    )
    urls = openai_fake.base_url, anthropic_fake.base_url
    async with providers_service(tmp_path, *urls, extra_models=[batchable(batch_price=True)]) as stub:
        submitted = await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model="batchable", requests=[line]))
    poll = provider_pb2.PollBatchRequest(model="batchable", batch_id=submitted.batch_id, request_ids=["line-1"])
    async with providers_service(tmp_path, *urls, extra_models=[batchable(batch_price=False)]) as stub:
        await stub.PollBatch(poll)  # in progress
        polled = await stub.PollBatch(poll)
    assert polled.ended
    (result,) = polled.results
    assert result.succeeded and result.response.usage.output_tokens > 0
