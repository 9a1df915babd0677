"""A direct caller's temperature over the most its model's API takes (registry max_temperature; Anthropic's: 1) is
refused by the real providers service, INVALID_ARGUMENT naming `temperature`, before any upstream call: sent, it is the
upstream's 400 (the fake refuses it as api.anthropic.com does). Within the range it is sent as given."""

from __future__ import annotations

import grpc
import pytest

from llmrouter.v1 import provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import model_entry, stub_serving
from tests.providers.helpers import collect, error_of, request

EXTRA_MODELS = [model_entry("claude-capped", "fakeanthropic", "premium", "3", "15", max_temperature=1)]


stub = stub_serving(EXTRA_MODELS)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_temperature_over_the_models_max_is_refused_before_any_upstream_call(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic, stream: bool
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if stream:
            await collect(stub, request("claude-capped", temperature=1.5))
        else:
            await stub.Generate(request("claude-capped", temperature=1.5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(caught.value)
    assert error.reason == "UNSUPPORTED_PARAMETER"
    assert error.metadata == {"field": "temperature", "model": "claude-capped", "capability": "max_temperature"}
    assert error.message == (
        "model 'claude-capped' takes a temperature of at most 1.0, not 1.5 (registry: max_temperature); "
        "nothing was sent upstream"
    )
    assert not anthropic_fake.requests


@pytest.mark.parametrize(("model", "temperature"), [("claude-capped", 1.0), ("claude-capped", 0.0), ("strong", 1.5)])
async def test_a_temperature_within_the_models_range_is_sent_as_given(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    temperature: float,
) -> None:
    response = await stub.Generate(request(model, temperature=temperature))
    assert response.content and response.model == model
    (sent,) = [*openai_fake.requests, *anthropic_fake.requests]
    assert sent.json["temperature"] == temperature
