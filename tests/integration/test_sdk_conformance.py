"""The edge against OpenAI's API reference, driven by the official SDK (sync and async, streamed and not) and by raw
HTTP where the SDK hides the wire: what a caller of api.openai.com gets, a caller of the router gets too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from services.providers import dispatch
from tests.fakes.server import TOOL_CUE
from tests.integration.conftest import Chain
from tests.integration.test_chain import client, unique
from tests.integration.test_tool_calls import TOOLS


def tokens_of(logprobs: Any) -> list[str]:
    assert logprobs is not None and logprobs.content is not None
    return [entry.token for entry in logprobs.content]


async def test_logprobs_asked_for_are_returned(chain: Chain) -> None:
    raw = await client(chain).chat.completions.with_raw_response.create(
        model="cheap-model", messages=[{"role": "user", "content": unique("hi")}], logprobs=True, top_logprobs=1
    )
    choice = raw.parse().choices[0]
    assert "".join(tokens_of(choice.logprobs)) == choice.message.content
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entry = choice.logprobs.content[0]
    assert entry.logprob == -0.05 and entry.bytes == list(entry.token.encode())
    assert [t.token for t in entry.top_logprobs] == [entry.token]


async def test_logprobs_are_null_when_not_asked_for(chain: Chain) -> None:
    # quality_target 0 routes to the cheap model, whose logprobs the router asks for itself (a confidence signal):
    # those are the router's, not the caller's.
    response = await httpx.AsyncClient(timeout=30).post(
        f"{chain.base_url}/chat/completions",
        json={"model": "auto", "quality_target": 0, "messages": [{"role": "user", "content": unique("hi")}]},
    )
    assert response.status_code == 200
    assert "logprobs" in chain.budget.requests[-1].json  # asked of the upstream all the same
    choice = response.json()["choices"][0]
    assert choice["logprobs"] is None  # present and null, as OpenAI sends it


async def test_logprobs_asked_for_in_a_stream_are_returned(chain: Chain) -> None:
    stream = await client(chain).chat.completions.create(
        model="cheap-model", messages=[{"role": "user", "content": unique("hi there")}], logprobs=True, stream=True
    )
    content, tokens = "", []
    async for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            if choice.logprobs is not None:
                tokens += tokens_of(choice.logprobs)
    assert content and "".join(tokens) == content


async def test_the_sync_sdks_stream_helper_joins_a_streams_logprobs(chain: Chain) -> None:
    def joined() -> Any:
        sdk = openai.OpenAI(base_url=chain.base_url, api_key="sk-test", max_retries=0)
        messages: Any = [{"role": "user", "content": unique("hello")}]
        with sdk.chat.completions.stream(model="strong-model", messages=messages, logprobs=True) as stream:
            return stream.get_final_completion()

    choice = (await asyncio.to_thread(joined)).choices[0]  # the edge runs on this loop
    assert "".join(tokens_of(choice.logprobs)) == choice.message.content


async def test_stream_options_include_obfuscation_is_accepted(chain: Chain) -> None:
    stream = await client(chain).chat.completions.create(
        model="cheap-model",
        messages=[{"role": "user", "content": unique("hi")}],
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
async def test_every_chunk_of_a_stream_has_the_streams_created_time(chain: Chain, route: str) -> None:
    """OpenAI stamps a stream's chunks with one `created`, the completion's: a stream that spans a second must
    not change it part way."""
    prompt = unique("a stream slow enough to span more than one second")
    body: dict[str, Any] = {"model": "strong-model", "stream": True, "stream_options": {"include_usage": True}}
    body |= {"prompt": prompt} if route == "completions" else {"messages": [{"role": "user", "content": prompt}]}
    chain.premium.chunk_delay = 0.15
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{chain.base_url}/{route}", json=body)
    finally:
        chain.premium.chunk_delay = 0.0
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: {")]
    created = {json.loads(event)["created"] for event in events}
    assert len(events) > 8 and len(created) == 1


async def test_a_streamed_tool_call_answer_has_null_content_as_unstreamed(chain: Chain) -> None:
    """The SDK's stream helper joins a stream into the completion the same request gets unstreamed: a tool call
    answer's content is None there, so the stream's first chunk must not make it ""."""
    sdk = openai.AsyncOpenAI(base_url=chain.base_url, api_key="sk-test", max_retries=0)
    messages: Any = [{"role": "user", "content": unique(f"weather {TOOL_CUE}")}]
    whole = await sdk.chat.completions.create(model="cheap-model", messages=messages, tools=TOOLS)
    messages = [{"role": "user", "content": unique(f"weather {TOOL_CUE}")}]
    async with sdk.chat.completions.stream(model="cheap-model", messages=messages, tools=TOOLS) as stream:
        joined = await stream.get_final_completion()
    assert whole.choices[0].message.content is None
    assert joined.choices[0].message.tool_calls and joined.choices[0].message.content is None


async def test_sync_and_async_clients_see_the_request_id(chain: Chain) -> None:
    def sync_call() -> tuple[str | None, str]:
        sdk = openai.OpenAI(base_url=chain.base_url, api_key="sk-test", max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(
            model="cheap-model", messages=[{"role": "user", "content": unique("hi")}]
        )
        return raw.parse()._request_id, raw.parse().id

    request_id, completion_id = await asyncio.to_thread(sync_call)
    assert request_id and completion_id == f"chatcmpl-{request_id}"
    with pytest.raises(openai.NotFoundError) as refused:
        await client(chain).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_found" and refused.value.request_id


@pytest.mark.parametrize("stream", [False, True])
async def test_a_providers_own_finish_reason_reaches_the_sdk_as_openais(chain: Chain, stream: bool) -> None:
    messages: Any = [{"role": "user", "content": unique("hi")}]
    chain.budget.finish_as = {"stop": "eos"}  # as Together ends an answer
    try:
        if stream:
            chunks = [
                c
                async for c in await client(chain).chat.completions.create(
                    model="cheap-model", messages=messages, stream=True
                )
            ]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            reply = await client(chain).chat.completions.create(model="cheap-model", messages=messages)
            finish = reply.choices[0].finish_reason
    finally:
        chain.budget.finish_as = {}
    assert finish == "stop"


async def test_logprobs_too_large_for_the_reply_leave_the_answer_whole(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound (lowered here; 4 MiB as shipped) the answer is served without them rather than lost with them."""
    monkeypatch.setattr(dispatch, "MAX_LOGPROBS_BYTES", 10)
    completion = await client(chain).chat.completions.create(
        model="cheap-model", messages=[{"role": "user", "content": unique("hi")}], logprobs=True, top_logprobs=1
    )
    choice = completion.choices[0]
    assert choice.message.content and choice.logprobs is None


IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
# Requests each refused by a different step (the chat route's validation, the Responses translation's own checks,
# its item validation, the bounds), each with the param OpenAI would name: indexes in brackets, fields after dots.
CHAT_REFUSALS: list[tuple[dict[str, Any], str]] = [
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": [IMAGE_PART]}]},
        "messages[1].content[0].type",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": ""}}]},
        "tools[0].function.name",
    ),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", 1]}, "stop[1]"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c9", "content": "x"}]},
        "messages[1].tool_call_id",
    ),
]
RESPONSES_REFUSALS: list[tuple[dict[str, Any], str]] = [
    (
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_image"}]}]},
        "input[0].content[1].type",
    ),
    (
        {"input": [{"role": "user", "content": "hi"}, {"type": "function_call_output", "output": "x"}]},
        "input[1].call_id",
    ),
    ({"input": [{"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"}]}, "input[1].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools[0].parameters"),
    ({"input": [{"role": "user", "content": "hi"}, *[{**CALL, "call_id": f"c{i}"} for i in range(129)]]}, "input[129]"),
]


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [("chat", *case) for case in CHAT_REFUSALS] + [("responses", *case) for case in RESPONSES_REFUSALS],
)
async def test_the_sdk_sees_each_refusal_naming_its_field_as_openai_does(
    chain: Chain, route: str, fields: dict[str, Any], param: str
) -> None:
    """Every route spells a param in OpenAI's one form: the Responses route's own checks named their items with dots
    (`input.0.content.1.type`) while the errors mapped back from the chat path used brackets (`input[4].arguments`)."""
    sdk = client(chain)
    with pytest.raises(openai.BadRequestError) as refused:
        if route == "chat":
            await sdk.chat.completions.create(model="auto", **fields)
        else:
            await sdk.responses.create(model="auto", **fields)
    assert refused.value.status_code == 400 and refused.value.param == param, refused.value.body
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == param
