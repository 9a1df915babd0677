"""finish_reason in OpenAI's values whatever the provider calls it: OpenAI-compatible upstreams have their own
(Together's "eos", Mistral's "model_length"), and an SDK caller, or the router's escalation on a truncated answer,
knows only stop, length, tool_calls, content_filter and function_call."""

from __future__ import annotations

from typing import Any

import pytest

from llmrouter.v1 import provider_pb2_grpc
from services.providers.gateways.base import openai_finish_reason
from tests.fakes.fake_openai import FakeOpenAI
from tests.providers.helpers import collect, request

CASES = [("eos", "stop"), ("model_length", "length"), ("stop", "stop"), ("length", "length")]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("sent", "served"), CASES)
async def test_a_providers_own_finish_reason_is_served_as_openais(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, stream: bool, sent: str, served: str
) -> None:
    natural = "length" if served == "length" else "stop"
    openai_fake.finish_as = {natural: sent}
    try:
        fields: dict[str, Any] = {"max_tokens": 3} if natural == "length" else {}
        if stream:
            _, final = await collect(stub, request("cheap", **fields))
            assert final is not None
            finish = final.finish_reason
        else:
            finish = (await stub.Generate(request("cheap", **fields))).finish_reason
    finally:
        openai_fake.finish_as = {}
    assert finish == served


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("function_call", "function_call"),
        ("eos", "stop"),
        ("end_turn", "stop"),
        ("model_length", "length"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("", "stop"),
        ("something_new", "stop"),
    ],
)
def test_openai_finish_reason(given: str, expected: str) -> None:
    assert openai_finish_reason(given) == expected
