"""A direct caller's stop sequence of only whitespace, for a model whose API refuses one (registry `blank_stop`:
Anthropic's, a 400 the fake answers as api.anthropic.com does), is refused by the real providers service naming `stop`,
before any upstream call, never dropped; to a model that takes it, and as any other stop, it is sent as given."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from llmrouter.v1 import provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import model_entry, stub_serving
from tests.providers.helpers import collect, error_of, request

EXTRA_MODELS = [model_entry("claude-strict", "fakeanthropic", "premium", "3", "15", blank_stop=False)]


stub = stub_serving(EXTRA_MODELS)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("stop", ["\n", ["END", " "]])
async def test_a_blank_stop_for_a_model_that_refuses_it_is_refused_before_any_upstream_call(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic, stream: bool, stop: Any
) -> None:
    asked = request("claude-strict", passthrough_json=json.dumps({"stop": stop}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if stream:
            await collect(stub, asked)
        else:
            await stub.Generate(asked)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(caught.value)
    assert error.reason == "UNSUPPORTED_PARAMETER"
    assert error.metadata == {"field": "stop", "model": "claude-strict", "capability": "blank_stop"}
    assert error.message == (
        "model 'claude-strict' does not honour a stop sequence of only whitespace (registry: blank_stop is false); "
        "nothing was sent upstream"
    )
    assert not anthropic_fake.requests


@pytest.mark.parametrize(
    ("model", "stop", "field", "sent"),
    [
        ("claude-strict", ["END", "###"], "stop_sequences", ["END", "###"]),
        ("claude-strict", "END", "stop_sequences", ["END"]),
        ("strong", "\n", "stop", "\n"),
        ("strong", ["END", "\n\n"], "stop", ["END", "\n\n"]),
    ],
)
async def test_a_stop_the_model_takes_is_sent_as_given(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    stop: Any,
    field: str,
    sent: Any,
) -> None:
    response = await stub.Generate(request(model, passthrough_json=json.dumps({"stop": stop})))
    assert response.content and response.model == model
    (received,) = [*openai_fake.requests, *anthropic_fake.requests]
    assert received.json[field] == sent
