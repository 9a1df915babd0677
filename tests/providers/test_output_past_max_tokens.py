"""An upstream reporting more output than the max_tokens it was sent (a buggy or hostile OpenAI-compatible server, a
proxy inflating usage): no upstream writes past max_tokens, so the answer is charged max_tokens, the most it can have
written, flagged estimated and counted in llmrouter_provider_usage_implausible_total. Charged as reported, the tenant
paid for tokens never generated, up to the request's hold: its input bound (a prompt's UTF-8 bytes, for most models)
leaves room well past max_tokens. An honest report of max_tokens itself is charged as reported. OpenAI's and
Anthropic's wire formats, from the fakes on loopback, unary and streamed, and a stream cut after its usage."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, cost, error_of, metric, request
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk

MAX_TOKENS = 8
PRICES = {"cheap": ("0.15", "0.60"), "claude": ("3.00", "15.00")}
OUTPUT_KEY = {"cheap": "completion_tokens", "claude": "output_tokens"}
PROVIDER = {"cheap": "fakeai", "claude": "fakeanthropic"}
IMPLAUSIBLE = "llmrouter_provider_usage_implausible_total"


async def generate(stub: provider_pb2_grpc.ProviderStub, model: str, streamed: bool) -> provider_pb2.GenerateResponse:
    req = request(model, "Tell me about the sea.", max_tokens=MAX_TOKENS)
    if not streamed:
        return await stub.Generate(req)
    _, final = await collect(stub, req)
    assert final is not None
    return final


def implausible(model: str) -> float:
    return metric(IMPLAUSIBLE, provider=PROVIDER[model], model=model, direction="output")


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("model", ["cheap", "claude"])
async def test_output_past_max_tokens_is_charged_max_tokens(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    streamed: bool,
) -> None:
    fake = openai_fake if model == "cheap" else anthropic_fake
    fake.usage_as = {OUTPUT_KEY[model]: 100 * MAX_TOKENS}
    if model == "claude":
        anthropic_fake.delta_usage_as = {"output_tokens": 100 * MAX_TOKENS}  # a stream's output: message_delta's
    before = implausible(model)
    answer = await generate(stub, model, streamed)
    assert answer.usage.output_tokens == MAX_TOKENS and answer.usage.estimated
    assert answer.cost_usd == cost(answer.usage.input_tokens, MAX_TOKENS, *PRICES[model])
    assert implausible(model) == before + 1


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
async def test_output_of_max_tokens_is_charged_as_reported(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, streamed: bool
) -> None:
    openai_fake.usage_as = {"completion_tokens": MAX_TOKENS}
    before = implausible("cheap")
    answer = await generate(stub, "cheap", streamed)
    assert answer.usage.output_tokens == MAX_TOKENS and not answer.usage.estimated
    assert implausible("cheap") == before


async def test_a_stream_cut_after_usage_past_max_tokens_is_charged_max_tokens(tmp_path: Path) -> None:
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 100 * MAX_TOKENS}}
    cut = events(openai_chunk({"content": "The sea"}), usage)  # neither its finish nor [DONE]: cut
    async with RawUpstream(cut) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(stub, request("cheap", max_tokens=MAX_TOKENS))
    error = error_of(caught.value)
    assert error.reason == "STREAM_INTERRUPTED"
    assert error.metadata["output_tokens"] == str(MAX_TOKENS) and error.metadata["estimated"] == "true"
    assert error.metadata["cost_usd"] == cost(10, MAX_TOKENS, *PRICES["cheap"])
