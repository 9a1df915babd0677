"""A direct gRPC caller of the providers service naming a model of 20,000 characters is refused MODEL_NOT_FOUND, the
name cut in the refusal: quoted whole in its ErrorInfo metadata, it passed gRPC's 16 KiB hard limit on metadata, and
the caller got "Stream removed" (RESOURCE_EXHAUSTED, no ErrorInfo) instead of the refusal. A number past a float's
range (1e999) in its passthrough_json or a message's tool_calls_json is refused naming the field, before any upstream
is called: it was read as infinity and sent on as `Infinity`, which is no JSON. So are the sampling and log-probability
fields out of the range or type the edge holds a REST caller to (a top_p of 5, a seed of 1.5): they were sent on, for
the upstream to refuse after routing, and so is any passthrough field the edge would refuse a REST caller (`{"tools":
"x"}`, tool_choice without tools, `n` of 2), naming it: the upstream was called, for it to refuse (its words kept from
the caller, the attempt perhaps charged). A malformed retry_budget_usd or admitted_prices is refused on Generate as on
GenerateStream (Generate served it, unread). The real service on loopback, the fake OpenAI upstream behind it."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from llmrouter.errors import MAX_METADATA_CHARS
from llmrouter.json_depth import MAX_JSON_DEPTH
from llmrouter.v1 import common_pb2, provider_pb2_grpc
from tests.fakes import FakeOpenAI
from tests.providers.helpers import error_of, request


async def test_a_huge_model_name_is_refused_clearly(stub: provider_pb2_grpc.ProviderStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request("m" * 20_000))
    error = error_of(refused.value)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert error.metadata["model"].startswith("mmm") and len(error.metadata["model"]) == MAX_METADATA_CHARS


def call(number: str) -> str:
    """A tool call of the assistant's, OpenAI's shape, with `number` in it as written."""
    return '{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "index": ' + number + "}"


@pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN"])
@pytest.mark.parametrize("field", ["passthrough_json", "messages[2].tool_calls_json"])
async def test_a_number_past_a_floats_range_is_refused_before_the_upstream(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, field: str, number: str
) -> None:
    generate = request("cheap")
    if field == "passthrough_json":
        generate.passthrough_json = '{"top_p": ' + number + "}"
    else:
        calls = common_pb2.ChatMessage(role="assistant", tool_calls_json=f"[{call(number)}]")
        answer = common_pb2.ChatMessage(role="tool", tool_call_id="c1", content="42")
        generate.messages.extend([calls, answer])
        generate.messages.add(role="user", content="And?")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(generate)
    error = error_of(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert "every number in it finite" in error.message, error.message  # not a JSON object refused as none
    assert openai_fake.requests == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("top_p", 5),
        ("top_p", "0.5"),
        ("top_p", True),
        ("presence_penalty", -1e300),
        ("frequency_penalty", 2.5),
        ("seed", 1.5),
        ("seed", 2**63),
        ("parallel_tool_calls", "yes"),
    ],
)
async def test_a_sampling_field_out_of_its_range_is_refused_before_the_upstream(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, name: str, value: object
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request("strong", passthrough_json=json.dumps({name: value})))
    error = error_of(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, name)
    assert openai_fake.requests == []


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("tools", {"tools": "x"}),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
        ("tool_choice", {"tool_choice": "required"}),
        ("response_format", {"response_format": {"type": "json_schema"}}),
        ("functions", {"functions": [{"name": "f"}]}),
        ("n", {"n": 2}),
        ("metadata", {"metadata": []}),
    ],
)
async def test_a_passthrough_field_the_edge_refuses_is_refused_before_the_upstream(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, name: str, fields: dict[str, object]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request("strong", passthrough_json=json.dumps(fields)))
    error = error_of(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, name)
    assert openai_fake.requests == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("top_p", 0),
        ("top_p", 1.0),
        ("presence_penalty", -2),
        ("presence_penalty", 2.0),
        ("frequency_penalty", 2),
        ("frequency_penalty", -2.0),
        ("seed", 2**63 - 1),
        ("seed", -(2**63)),
        ("top_p", None),
    ],
)
async def test_a_sampling_field_at_the_edge_of_its_range_is_sent_on(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, name: str, value: object
) -> None:
    """What the edge accepts from a REST caller (its bounds inclusive, as OpenAI's; null a field left out)."""
    await stub.Generate(request("strong", passthrough_json=json.dumps({name: value})))
    assert openai_fake.requests[-1].json.get(name) == value


@pytest.mark.parametrize("depth", [65, 100_000], ids=["past-the-limit", "past-the-parsers-depth"])
async def test_a_passthrough_nested_past_the_depth_limit_is_refused_naming_it(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, depth: int
) -> None:
    """The edge's bound on a REST body's nesting (MAX_JSON_DEPTH), held to a gRPC caller's passthrough_json, and said:
    it was refused as "must be a JSON object, every number in it finite", which it was (or, under the parser's depth,
    sent on for the upstream)."""
    nested = '{"metadata": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request("strong", passthrough_json=nested))
    error = error_of(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, "passthrough_json")
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error.message, error.message
    assert openai_fake.requests == []


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("retry_budget_usd", {"retry_budget_usd": "NaN"}),
        ("retry_budget_usd", {"retry_budget_usd": "-1"}),
        ("retry_budget_usd", {"retry_budget_usd": ""}),
        ("admitted_prices.input_usd_per_mtok", {"admitted_prices": common_pb2.Prices(input_usd_per_mtok="Infinity")}),
        ("admitted_prices.output_usd_per_mtok", {"admitted_prices": common_pb2.Prices(input_usd_per_mtok="1")}),
    ],
)
async def test_a_malformed_amount_is_refused_on_a_unary_call_as_on_a_stream(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, field: str, fields: dict[str, Any]
) -> None:
    """Generate retries against no budget, but a caller's malformed amount is its bug whichever call carries it: it
    was served on Generate, unread, while GenerateStream refused it."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request("cheap", **fields))
    error = error_of(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert openai_fake.requests == []
