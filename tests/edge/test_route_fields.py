"""Each OpenAI route takes the fields OpenAI's takes, as its official SDK types them, and refuses any other as OpenAI
does: a 400 naming it, before anything is routed. /v1/completions took the chat route's fields (messages, tools,
response_format, max_completion_tokens, ...) and served them; /v1/responses took the chat route's
stream_options.include_usage. The official SDK as a caller, the real edge over loopback before a stand-in router that
records what it is asked."""

from __future__ import annotations

import typing
from typing import Any

import httpx
import openai
import pytest
from openai.types import completion_create_params
from openai.types.responses import response_create_params

from llmrouter.passthrough import ROUTER_EXTENSIONS
from services.edge import legacy, responses
from tests.edge.conftest import Edge

USER = {"role": "user", "content": "hello"}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
# What a caller would send for the chat fields it would most likely send here; any other a string.
CHAT_VALUES: dict[str, Any] = {
    "messages": [USER],
    "tools": [TOOL],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "functions": [{"name": "lookup", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "max_completion_tokens": 8,
    "top_logprobs": 2,
    "metadata": {"k": "v"},
    "store": False,
    "modalities": ["text"],
    "safety_identifier": "someone",
    "prompt_cache_key": "cache",
}


def sdk(edge: Edge) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0)


def test_the_legacy_route_takes_the_sdks_completion_fields_and_the_routers_own() -> None:
    sdk_fields = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsBase))
    assert sdk_fields | {"stream"} | ROUTER_EXTENSIONS == legacy.COMPLETION_FIELDS


def test_the_responses_stream_options_are_the_sdks() -> None:
    assert set(responses.StreamOptions.model_fields) == set(typing.get_type_hints(response_create_params.StreamOptions))


@pytest.mark.parametrize("field", sorted(legacy.CHAT_ONLY))
async def test_a_chat_field_on_the_legacy_route_is_an_unknown_argument(edge: Edge, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        async with sdk(edge) as client:
            await client.completions.create(
                model="auto", prompt="hello", extra_body={field: CHAT_VALUES.get(field, "x")}
            )
    assert refused.value.body == {
        "message": f"unrecognized request argument: {field!r} (it belongs to /v1/chat/completions)",
        "type": "invalid_request_error",
        "param": field,
        "code": "unknown_parameter",
    }
    assert edge.router.asked == []


async def test_a_field_no_route_knows_is_an_unknown_argument_on_the_legacy_route(edge: Edge) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        async with sdk(edge) as client:
            await client.completions.create(model="auto", prompt="hello", extra_body={"x" * 100: None})
    assert (refused.value.param, refused.value.code) == ("x" * 64, "unknown_parameter")
    assert refused.value.body["message"] == f"unrecognized request argument: {'x' * 64!r}"  # type: ignore[index]
    assert edge.router.asked == []


async def test_every_legacy_field_the_sdk_sends_is_still_served(edge: Edge) -> None:
    async with sdk(edge) as client:
        await client.completions.create(
            model="auto",
            prompt="hello",
            best_of=1,
            echo=False,
            frequency_penalty=0.1,
            logit_bias={"50256": -100},
            logprobs=0,
            max_tokens=8,
            n=1,
            presence_penalty=0.1,
            seed=5,
            stop=["\n\n"],
            suffix="",
            temperature=0.2,
            top_p=0.9,
            user="end-user",
            extra_body={"quality_target": 0.5, "max_cost_usd": "0.01"},
        )
    [asked] = edge.router.asked
    assert (asked.max_tokens, asked.max_cost_usd, asked.messages[0].content) == (8, "0.01", "hello")


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"include_usage": True}, "stream_options.include_usage"),
        ({"include_usage": False}, "stream_options.include_usage"),
        ({"include_obfuscation": False, "include_usage": True}, "stream_options"),  # named in the message
        ({"include_obfuscation": "no"}, "stream_options.include_obfuscation"),
        ([], "stream_options"),
    ],
)
async def test_stream_options_the_responses_api_does_not_take_are_a_400_naming_them(
    edge: Edge, options: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        async with sdk(edge) as client:
            await client.responses.create(model="auto", input="hello", stream=True, stream_options=options)
    assert (refused.value.param, refused.value.code, refused.value.type) == (
        param,
        "invalid_value",
        "invalid_request_error",
    )
    assert "include_usage" in refused.value.message or "include_usage" not in str(options)
    assert edge.router.asked == []


def test_the_responses_stream_options_it_takes_reach_the_chat_path_with_the_usage() -> None:
    body = b'{"input": "hi", "stream": true, "stream_options": {"include_obfuscation": false}}'
    chat, _ = responses.to_chat(body)
    assert b'"stream_options": {"include_obfuscation": false, "include_usage": true}' in chat


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("chat/completions", {"model": "auto", "messages": [USER], "stream": True, "stream_options": "yes"}),
        ("responses", {"model": "auto", "input": "hello", "stream": True, "stream_options": "yes"}),
        ("chat/completions", {"model": "auto", "messages": ["hello"]}),
    ],
)
async def test_an_object_sent_as_another_type_is_told_so_without_the_class_that_reads_it(
    edge: Edge, route: str, body: dict[str, Any]
) -> None:
    """Pydantic's words ("a valid dictionary or instance of StreamOptions") named the edge's own classes."""
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as http:
        reply = await http.post(f"/{route}", json=body)
    error = reply.json()["error"]
    assert (reply.status_code, error["code"]) == (400, "invalid_value"), reply.text
    assert error["message"].endswith("Input should be a JSON object"), error
    assert "instance of" not in error["message"]
    assert edge.router.asked == []
