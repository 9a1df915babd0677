"""A provider's failure to read a batch told apart: one no try will pass (the provider no longer knows the batch, 404 or
410; it refuses the read as invalid, 400; the result file is past MAX_FILE_BYTES) is FAILED_PRECONDITION
BATCH_UNREADABLE, so the router gives the batch's lines up near their window's end at once rather than trying it again
for minutes; one that may pass (5xx, 429, a 401) stays UNAVAILABLE UPSTREAM_UNAVAILABLE. Neither tells the
provider's words or address. The real providers service on loopback, before the fake OpenAI Batch API."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from services.providers.gateways import batch_client
from tests.fakes import FakeAnthropic, FakeOpenAI, Fault
from tests.providers.conftest import model_entry, providers_service

BATCHABLE = [
    model_entry(
        "batch-openai", "fakeai", "economy", "0.15", "0.60", batch_input_usd_per_mtok="0.075",
        batch_output_usd_per_mtok="0.30",
    )
]  # fmt: skip
SECRET = "org-4471 at 10.2.3.4: batch purged"


async def submitted(stub: provider_pb2_grpc.ProviderStub) -> str:
    line = provider_pb2.GenerateRequest(
        model="batch-openai",
        request_id="line-1",
        messages=[common_pb2.ChatMessage(role="user", content="hi")],
        max_tokens=8,
    )
    request = provider_pb2.SubmitBatchRequest(model="batch-openai", requests=[line])
    return (await stub.SubmitBatch(request, timeout=10)).batch_id


async def poll_error(stub: provider_pb2_grpc.ProviderStub, batch_id: str) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.PollBatch(provider_pb2.PollBatchRequest(model="batch-openai", batch_id=batch_id), timeout=10)
    return ServiceError.from_rpc_error(failed.value)


def unreadable_for_good(error: ServiceError, fake: FakeOpenAI) -> bool:
    told = error.message
    return (
        (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BATCH_UNREADABLE")
        and SECRET not in told
        and fake.base_url not in told
        and "127.0.0.1" not in told
    )


async def test_a_batch_the_provider_no_longer_knows_or_refuses_is_unreadable_for_good(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    async with providers_service(
        tmp_path, openai_fake.base_url, anthropic_fake.base_url, extra_models=BATCHABLE
    ) as stub:
        batch_id = await submitted(stub)
        assert unreadable_for_good(await poll_error(stub, "batch_gone"), openai_fake)  # the fake's own 404
        for status in (400, 404, 410, 422):
            openai_fake.enqueue(Fault.error(status, message=SECRET))
            error = await poll_error(stub, batch_id)
            assert unreadable_for_good(error, openai_fake), (status, error.code, error.reason, error.message)


async def test_failures_that_may_pass_stay_unavailable(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    async with providers_service(
        tmp_path, openai_fake.base_url, anthropic_fake.base_url, extra_models=BATCHABLE
    ) as stub:
        batch_id = await submitted(stub)
        for fault in (Fault.error(503, message=SECRET), Fault.error(500), Fault.error(429), Fault.error(401)):
            openai_fake.enqueue(fault)
            error = await poll_error(stub, batch_id)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"), fault
            assert SECRET not in error.message and openai_fake.base_url not in error.message
        # Passed: the batch is read.
        poll = provider_pb2.PollBatchRequest(model="batch-openai", batch_id=batch_id)
        assert (await stub.PollBatch(poll, timeout=10)).status


async def test_a_result_file_too_large_is_unreadable_for_good(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_client, "MAX_FILE_BYTES", 16)  # the fake's one result line is longer
    async with providers_service(
        tmp_path, openai_fake.base_url, anthropic_fake.base_url, extra_models=BATCHABLE
    ) as stub:
        batch_id = await submitted(stub)
        poll = provider_pb2.PollBatchRequest(model="batch-openai", batch_id=batch_id, request_ids=["line-1"])
        for _ in range(10):  # validating, in progress, then completed: its output file read
            try:
                assert not (await stub.PollBatch(poll, timeout=10)).ended
            except grpc.aio.AioRpcError as failed:
                assert unreadable_for_good(ServiceError.from_rpc_error(failed), openai_fake)
                return
        pytest.fail("the batch never ended")
