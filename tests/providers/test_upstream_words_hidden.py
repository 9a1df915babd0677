"""A direct gRPC caller of the providers service is told what kind of failure a provider's was, in fixed words that
keep its status class (rate limited, overloaded, refused as invalid, credentials refused, ...), never the provider's
own error text (which may quote the operator's organisation or an internal host) nor the address a connection failed
to reach. The provider's words are logged, with the request id. Real providers service on loopback, fake upstreams
speaking OpenAI's and Anthropic's wire formats."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.server import Fault
from tests.providers.conftest import OPENAI_KEY, model_entry, providers_service
from tests.providers.helpers import error_of, request, stream_to_failure

SECRET = "org-Zq81Secret at http://10.0.3.7:8000/srv/llm/app.py line 12"


@pytest.mark.parametrize(
    ("status", "reason", "told"),
    [
        (429, "UPSTREAM_RATE_LIMITED", "the provider is rate limiting requests (HTTP 429)"),
        (503, "UPSTREAM_UNAVAILABLE", "the provider is overloaded (HTTP 503)"),
        (500, "UPSTREAM_UNAVAILABLE", "the provider failed with a server error (HTTP 500)"),
        (400, "UPSTREAM_ERROR", "the provider refused the request as invalid (HTTP 400)"),
        (403, "UPSTREAM_ERROR", "the provider refused this service's credentials (HTTP 403)"),
        (413, "UPSTREAM_ERROR", "the provider refused the request as too large (HTTP 413)"),
        (409, "UPSTREAM_ERROR", "the provider refused the request (HTTP 409)"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_providers_error_text_is_logged_not_told(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    status: int,
    reason: str,
    told: str,
    stream: bool,
) -> None:
    openai_fake.enqueue(*[Fault.error(status, message=SECRET)] * 3)  # every retry
    if stream:
        _, error = await stream_to_failure(stub, request("cheap"))
    else:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(request("cheap"))
        error = error_of(info.value)
    assert error.reason == reason and error.metadata["upstream_status"] == str(status)
    assert error.message == f"fakeai/cheap: {told}"
    logged = [r for r in caplog.records if SECRET in str(getattr(r, "error", ""))]
    assert logged and all(getattr(r, "request_id", "") == "t-1" for r in logged)


async def test_an_overloaded_anthropic_is_told_overloaded(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic
) -> None:
    anthropic_fake.enqueue(*[Fault.error(529, message=SECRET)] * 3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request("claude"))
    assert info.value.details() == "fakeanthropic/claude: the provider is overloaded (HTTP 529)"
    assert SECRET not in str(info.value.trailing_metadata())


async def test_a_context_window_refusal_keeps_its_kind(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    openai_fake.enqueue(Fault.error(400, message=f"maximum context length is 8192 tokens; {SECRET}"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request("cheap"))
    error = error_of(info.value)
    assert error.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert error.message == "fakeai/cheap: the prompt is longer than the model's context window (HTTP 400)"


async def test_an_unreachable_upstream_is_not_named(tmp_path: Path, anthropic_fake: FakeAnthropic) -> None:
    """aiohttp's connection error names the host and port it could not reach: an internal address."""
    async with providers_service(tmp_path, "http://127.0.0.9:9/v1", anthropic_fake.base_url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(request("cheap"))
    assert info.value.details() == "fakeai/cheap: the provider could not be reached"
    assert "127.0.0.9" not in str(info.value.trailing_metadata())


async def test_a_stream_cut_mid_answer_is_told_in_fixed_words(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    openai_fake.enqueue(Fault.cut(after_chunks=2))
    deltas, error = await stream_to_failure(stub, request("cheap"))
    assert deltas and error.reason == "STREAM_INTERRUPTED"
    assert error.message == "fakeai/cheap: the provider's stream broke off after it began answering"
    assert "127.0.0.1" not in error.message and "Error" not in error.message


@pytest.mark.parametrize(("status", "reason"), [(400, "BATCH_NOT_CREATED"), (500, "BATCH_OUTCOME_UNKNOWN")])
async def test_a_batch_the_provider_failed_is_not_quoted(
    tmp_path: Path,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    caplog: pytest.LogCaptureFixture,
    status: int,
    reason: str,
) -> None:
    prices = {"batch_input_usd_per_mtok": "0.075", "batch_output_usd_per_mtok": "0.3"}
    batchable = model_entry("batchable", "fakeai", "economy", "0.15", "0.60", **prices)
    urls = openai_fake.base_url, anthropic_fake.base_url
    async with providers_service(tmp_path, *urls, extra_models=[batchable]) as stub:
        # The file upload refused (400), or the creation after it failed (500: whether it was made is unknown).
        upload = [] if status == 400 else [Fault.delay(0)]
        openai_fake.enqueue(*upload, Fault.error(status, message=SECRET))
        batch = provider_pb2.SubmitBatchRequest(model="batchable", requests=[request("batchable")])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitBatch(batch)
    assert error_of(info.value).reason == reason
    assert SECRET not in (info.value.details() or "") and SECRET not in str(info.value.trailing_metadata())
    assert any(SECRET in str(getattr(r, "error", "")) for r in caplog.records)


async def test_a_batch_that_cannot_be_read_is_not_quoted(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    openai_fake.enqueue(*[Fault.error(500, message=SECRET)] * 3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PollBatch(provider_pb2.PollBatchRequest(model="cheap", batch_id="batch_abc"))
    assert info.value.details() == "the provider batch could not be read"
    assert SECRET not in str(info.value.trailing_metadata())


@pytest.mark.parametrize("call", ["SubmitBatch", "PollBatch"])
async def test_a_refused_key_is_neither_told_nor_logged_by_a_batch_call(
    tmp_path: Path,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    caplog: pytest.LogCaptureFixture,
    call: str,
) -> None:
    """OpenAI quotes the key it refuses: the batch calls logged the provider's words without taking it out."""
    prices = {"batch_input_usd_per_mtok": "0.075", "batch_output_usd_per_mtok": "0.3"}
    batchable = model_entry("batchable", "fakeai", "economy", "0.15", "0.60", **prices)
    openai_fake.api_key = "a-different-key"
    urls = openai_fake.base_url, anthropic_fake.base_url
    async with providers_service(tmp_path, *urls, extra_models=[batchable]) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if call == "SubmitBatch":
                await stub.SubmitBatch(
                    provider_pb2.SubmitBatchRequest(model="batchable", requests=[request("batchable")])
                )
            else:
                await stub.PollBatch(provider_pb2.PollBatchRequest(model="batchable", batch_id="batch_abc"))
    assert OPENAI_KEY not in (info.value.details() or "") + str(info.value.trailing_metadata())
    logged = [str(r.__dict__) for r in caplog.records if r.name == "llmrouter.providers"]
    assert any("[redacted]" in text for text in logged) and not any(OPENAI_KEY in text for text in logged)
