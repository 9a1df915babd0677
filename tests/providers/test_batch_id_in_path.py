"""A provider batch's id is the last segment of the upstream URL the providers service reads it at (GET
/batches/{id}, Anthropic's /v1/messages/batches/{id}/results), and a caller names it (the router passes on
CollectBatch's provider_batch_id). An id holding '/', '..', '?' or '#' had the provider's key read another path of its
API: '../models', 'x/../../files/<file>/content' (another batch's answers), '' (the list of every batch). It is
refused before anything is sent. The real providers service on loopback, before the fake OpenAI and Anthropic APIs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import model_entry, providers_service

BATCH_PRICES = {"batch_input_usd_per_mtok": "0.075", "batch_output_usd_per_mtok": "0.30"}
BATCHABLE = [
    model_entry("batch-openai", "fakeai", "economy", "0.15", "0.60", **BATCH_PRICES),
    model_entry("batch-anthropic", "fakeanthropic", "economy", "0.15", "0.60", **BATCH_PRICES),
]
HOSTILE_IDS = ["../models", "x/../../files/file-1/content", "", "..", "batch_1?limit=100", "batch_1#x", "batch 1"]


@pytest.mark.parametrize("model", ["batch-openai", "batch-anthropic"])
async def test_a_batch_id_that_would_leave_its_path_is_refused_unsent(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, model: str
) -> None:
    urls = openai_fake.base_url, anthropic_fake.base_url
    async with providers_service(tmp_path, *urls, extra_models=BATCHABLE) as stub:
        for batch_id in HOSTILE_IDS:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.PollBatch(provider_pb2.PollBatchRequest(model=model, batch_id=batch_id), timeout=10)
            error = ServiceError.from_rpc_error(refused.value)
            assert (error.code, error.reason, error.metadata) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_REQUEST",
                {"field": "batch_id"},
            ), batch_id
        assert openai_fake.requests == [] and anthropic_fake.requests == []
        # A provider's own id is read as before.
        line = provider_pb2.GenerateRequest(
            model=model, request_id="line-1", messages=[common_pb2.ChatMessage(role="user", content="hi")], max_tokens=8
        )
        submitted = await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model=model, requests=[line]), timeout=10)
        poll = provider_pb2.PollBatchRequest(model=model, batch_id=submitted.batch_id)
        assert (await stub.PollBatch(poll, timeout=10)).status
