"""A direct caller's request for what its model cannot honour (response_format, log-probabilities, logit_bias) is
refused by the real providers service, INVALID_ARGUMENT naming the field, before any upstream call: the gateways
would drop it (Anthropic's response_format, logit_bias) and answer plain text where JSON was asked. A field at its
"left out" value asks for nothing, and a model that honours what is asked is sent it."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from llmrouter.v1 import provider_pb2
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import model_entry, stub_serving
from tests.providers.helpers import collect, error_of, request

SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
BIAS = {"50256": -100}
# Beside the registry's own (cheap, strong: OpenAI-compatible, logprobs false, the rest true; claude: Anthropic,
# none of them): an upstream with JSON mode but no schemas, one returning log-probabilities, one refusing logit_bias
# (as Groq does), and one with a Batch API price.
EXTRA_MODELS = [
    model_entry("json-only", "fakeai", "economy", "0.10", "0.10", structured_outputs=False),
    model_entry("with-logprobs", "fakeai", "economy", "0.10", "0.10", logprobs=True),
    model_entry("no-bias", "fakeai", "economy", "0.10", "0.10", logit_bias=False),
    model_entry(
        "batchable",
        "fakeai",
        "economy",
        "0.10",
        "0.10",
        batch_input_usd_per_mtok="0.05",
        batch_output_usd_per_mtok="0.05",
    ),
]
# (model, passthrough, field the refusal names, capability the registry lacks)
UNHONOURED = [
    ("claude", {"response_format": {"type": "json_object"}}, "response_format", "json_mode"),
    ("claude", {"response_format": SCHEMA}, "response_format", "structured_outputs"),
    ("json-only", {"response_format": SCHEMA}, "response_format", "structured_outputs"),
    ("strong", {"logprobs": True}, "logprobs", "logprobs"),
    ("strong", {"logprobs": True, "top_logprobs": 2}, "logprobs", "logprobs"),
    # (top_logprobs without logprobs true is refused as the edge refuses it, before any model is looked at)
    ("claude", {"logprobs": True, "top_logprobs": 0}, "logprobs", "logprobs"),
    ("claude", {"logit_bias": BIAS}, "logit_bias", "logit_bias"),
    ("no-bias", {"logit_bias": BIAS}, "logit_bias", "logit_bias"),
]
UNHONOURED_IDS = [
    "json_object-anthropic",
    "json_schema-anthropic",
    "json_schema-without-structured_outputs",
    "logprobs",
    "logprobs-and-top_logprobs",
    "logprobs-anthropic",
    "logit_bias-anthropic",
    "logit_bias-refused-upstream",
]
LEFT_OUT: dict[str, Any] = {"response_format": None, "logprobs": False, "top_logprobs": None, "logit_bias": {}}


stub = stub_serving(EXTRA_MODELS)


def ask(model: str, passthrough: dict[str, Any]) -> provider_pb2.GenerateRequest:
    return request(model, passthrough_json=json.dumps(passthrough))


def assert_refused(caught: pytest.ExceptionInfo[grpc.aio.AioRpcError], model: str, field: str, capability: str) -> None:
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(caught.value)
    assert error.reason == "UNSUPPORTED_PARAMETER"
    assert error.metadata == {"field": field, "model": model, "capability": capability}
    assert f"(registry: {capability} is false)" in error.message


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("model", "passthrough", "field", "capability"), UNHONOURED, ids=UNHONOURED_IDS)
async def test_a_request_the_model_cannot_honour_is_refused_before_any_upstream_call(
    stub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    stream: bool,
    model: str,
    passthrough: dict[str, Any],
    field: str,
    capability: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if stream:
            await collect(stub, ask(model, passthrough))
        else:
            await stub.Generate(ask(model, passthrough))
    assert_refused(caught, model, field, capability)
    assert not openai_fake.requests and not anthropic_fake.requests


async def test_a_batch_line_the_model_cannot_honour_refuses_the_batch_before_any_upload(
    stub, openai_fake: FakeOpenAI
) -> None:
    lines = [
        provider_pb2.GenerateRequest(
            model="batchable", request_id=f"line-{i}", messages=request("batchable").messages, passthrough_json=extras
        )
        for i, extras in enumerate(["", json.dumps({"logprobs": True})])
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model="batchable", requests=lines))
    assert_refused(caught, "batchable", "logprobs", "logprobs")
    assert not openai_fake.requests  # no file uploaded, no batch created


@pytest.mark.parametrize("model", ["claude", "strong", "no-bias"])
async def test_fields_at_their_left_out_value_ask_for_nothing(
    stub, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, model: str
) -> None:
    response = await stub.Generate(ask(model, {**LEFT_OUT, "response_format": {"type": "text"}}))
    assert response.content and response.model == model
    assert len(openai_fake.requests) + len(anthropic_fake.requests) == 1
    response = await stub.Generate(ask(model, LEFT_OUT))
    assert response.content and response.model == model


@pytest.mark.parametrize(
    ("model", "passthrough"),
    [
        ("json-only", {"response_format": {"type": "json_object"}}),
        ("strong", {"response_format": SCHEMA}),
        ("with-logprobs", {"logprobs": True, "top_logprobs": 2}),
        ("strong", {"logit_bias": BIAS}),
    ],
    ids=["json_object", "json_schema", "logprobs", "logit_bias"],
)
async def test_a_model_that_honours_what_is_asked_is_sent_it(
    stub, openai_fake: FakeOpenAI, model: str, passthrough: dict[str, Any]
) -> None:
    response = await stub.Generate(ask(model, passthrough))
    assert response.content and response.model == model
    sent = openai_fake.requests[-1].json
    assert {k: sent[k] for k in passthrough} == passthrough


@pytest.mark.parametrize("logit_bias", [[], 0, {"50256": 1.5}], ids=["list", "zero", "float-bias"])
async def test_a_malformed_logit_bias_is_refused_as_the_router_refuses_it(
    stub, openai_fake: FakeOpenAI, logit_bias: Any
) -> None:
    """The validation the router applies (llmrouter/validation.py) holds for a direct caller too."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(ask("strong", {"logit_bias": logit_bias}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(caught.value)
    assert (error.reason, error.metadata) == ("INVALID_REQUEST", {"field": "logit_bias"})
    assert not openai_fake.requests
