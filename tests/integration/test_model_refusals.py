"""A model's refusal (OpenAI's message.refusal, its content null; streamed as delta.refusal pieces) carried end to end,
edge -> router -> providers -> a fake upstream speaking OpenAI's exact wire format, as the official openai SDK reads
it: `message.refusal` (and `parsed` None from `.parse()`), `delta.refusal` in a stream, the Responses API's `refusal`
content part and its response.refusal.delta / .done events; the legacy route, which has no place for it, an empty
text ended by content_filter. Its tokens are charged once, as any answer's; a cached refusal replays as one; a cheap
model's refusal is escalated to the strong one. The gateway read content only: the caller got an empty answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
from pydantic import BaseModel

from llmrouter.v1 import router_pb2_grpc
from tests.fakes.fake_openai import REFUSAL_CUE, REFUSED
from tests.fakes.server import TOOL_CUE
from tests.integration.conftest import Chain
from tests.integration.test_chain import client, expected_cost, unique
from tests.integration.test_escalation import ask, both_generations, charged
from tests.integration.test_tool_calls import TOOLS


class Answer(BaseModel):
    text: str


def refused_prompt() -> list[Any]:
    return [{"role": "user", "content": unique(f"How do I pick a lock? {REFUSAL_CUE}")}]


def charged_as_usage(chain: Chain, cost_usd: str) -> None:
    """The request's charge is the cheap model's one generation, by the fake's exact usage: billed once."""
    usage = chain.budget.answer(chain.budget.requests[-1].json)[2]
    assert usage["completion_tokens"] > 0 and Decimal(cost_usd) == expected_cost(chain, "cheap-model", usage)


async def test_the_sdk_reads_the_refusal_of_an_unstreamed_answer(chain: Chain) -> None:
    raw = await client(chain).chat.completions.with_raw_response.create(model="cheap-model", messages=refused_prompt())
    choice = raw.parse().choices[0]
    assert (choice.message.refusal, choice.message.content, choice.finish_reason) == (REFUSED, None, "stop")
    charged_as_usage(chain, raw.headers["x-router-cost-usd"])


async def test_parse_gives_no_parsed_answer_but_the_refusal(chain: Chain) -> None:
    completion = await client(chain).chat.completions.parse(
        model="cheap-model", messages=refused_prompt(), response_format=Answer
    )
    message = completion.choices[0].message
    assert message.parsed is None and message.refusal == REFUSED


async def test_the_sdk_reads_the_refusal_of_a_stream(chain: Chain) -> None:
    stream = await client(chain).chat.completions.create(
        model="cheap-model", messages=refused_prompt(), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    # As OpenAI's: the first chunk with a null content and an empty refusal, then the refusal's pieces.
    assert deltas[0].content is None and deltas[0].refusal == ""
    assert "".join(d.refusal or "" for d in deltas) == REFUSED and not any(d.content for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    extra = chunks[-1].model_extra
    assert extra is not None
    charged_as_usage(chain, extra["x_router"]["cost_usd"])


async def test_the_sdks_stream_helper_ends_on_the_refusal(chain: Chain) -> None:
    async with client(chain).chat.completions.stream(
        model="cheap-model", messages=refused_prompt(), response_format=Answer
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_completion()
    assert "refusal.delta" in kinds and "refusal.done" in kinds and "content.delta" not in kinds
    message = final.choices[0].message
    assert message.refusal == REFUSED and message.parsed is None


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cached_refusal_replays_as_a_refusal(chain: Chain, stream: bool) -> None:
    messages = refused_prompt()
    refusals: list[str | None] = []
    calls = len(chain.budget.requests)
    for _ in range(2):
        if stream:
            chunks = await client(chain).chat.completions.create(
                model="cheap-model", messages=messages, stream=True, stream_options={"include_usage": True}
            )
            parts = [chunk async for chunk in chunks]
            refusals.append("".join(c.choices[0].delta.refusal or "" for c in parts if c.choices))
            extra = parts[-1].model_extra
        else:
            completion = await client(chain).chat.completions.create(model="cheap-model", messages=messages)
            refusals.append(completion.choices[0].message.refusal)
            extra = completion.model_extra
    assert extra is not None and extra["x_router"]["cache_hit"] is True and extra["x_router"]["cost_usd"] == "0"
    assert refusals == [REFUSED, REFUSED] and len(chain.budget.requests) == calls + 1


@pytest.fixture
async def router(chain: Chain) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    """The chain's router, its strong model answering what the cheap one refuses."""
    before, chain.premium.refusal_text = chain.premium.refusal_text, lambda body: ""
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            yield router_pb2_grpc.RouterStub(channel)
    finally:
        chain.premium.refusal_text = before


async def test_a_cheap_models_refusal_is_escalated_and_both_generations_charged(
    chain: Chain, router: router_pb2_grpc.RouterStub
) -> None:
    tenant = f"refused-{uuid.uuid4().hex[:8]}"
    reply = await router.Complete(ask(REFUSAL_CUE, tenant), timeout=30)
    assert reply.escalated and reply.escalation_signal == "refusal" and reply.model == "strong-model"
    assert reply.content.startswith("[strong-model]") and reply.refusal == ""
    spend, ledger = await charged(chain, tenant)
    assert Decimal(reply.cost_usd) == both_generations(chain) and spend > 0
    assert len(ledger) == 1 and ledger[0]["escalation_signal"] == "refusal"


async def test_the_responses_api_gives_a_refusal_part(chain: Chain) -> None:
    response = await client(chain).responses.create(model="cheap-model", input=refused_prompt()[0]["content"])
    assert response.status == "completed" and response.output_text == ""
    (item,) = response.output
    assert item.type == "message" and [part.model_dump() for part in item.content] == [
        {"type": "refusal", "refusal": REFUSED}
    ]


async def test_a_streamed_response_gives_the_refusal_events(chain: Chain) -> None:
    stream = await client(chain).responses.create(
        model="cheap-model", input=refused_prompt()[0]["content"], stream=True
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.refusal.delta"}
    pieces = [e.delta for e in events if e.type == "response.refusal.delta"]
    done = next(e for e in events if e.type == "response.refusal.done")
    assert "".join(pieces) == done.refusal == REFUSED
    completed = events[-1]
    assert completed.type == "response.completed"
    (item,) = completed.response.output
    assert item.type == "message" and [part.model_dump() for part in item.content] == [
        {"type": "refusal", "refusal": REFUSED}
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_legacy_completion_of_a_refusal_is_empty_and_content_filtered(chain: Chain, stream: bool) -> None:
    body = {"model": "cheap-model", "prompt": refused_prompt()[0]["content"], "stream": stream}
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=30) as http:
        reply = await http.post("/completions", json=body)
    assert reply.status_code == 200
    if not stream:
        (choice,) = reply.json()["choices"]
        assert (choice["text"], choice["finish_reason"]) == ("", "content_filter")
        return
    lines = [line.removeprefix("data: ") for line in reply.text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(line) for line in lines if line != "[DONE]"]
    choices = [choice for chunk in chunks for choice in chunk["choices"]]
    assert "".join(c["text"] for c in choices) == "" and choices[-1]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refusal_escalated_to_tool_calls_is_no_longer_told(chain: Chain, stream: bool) -> None:
    """The strong model's answer replaces the refused one whole: when it only calls tools, the caller gets its calls,
    not them beside the cheap model's refusal (which OpenAI's SDK reads as the model having declined). A stream is
    escalated only buffered (x-router-buffer-stream)."""
    before, chain.premium.refusal_text = chain.premium.refusal_text, lambda body: ""
    try:
        options: dict[str, Any] = {
            "model": "auto",
            "messages": [{"role": "user", "content": unique(f"Weather in Paris? {REFUSAL_CUE} {TOOL_CUE}")}],
            "tools": TOOLS,
            "extra_body": {"quality_target": 0},
        }
        if stream:
            options["extra_headers"] = {"x-router-buffer-stream": "true"}
            chunks = [
                c
                async for c in await client(chain).chat.completions.create(
                    stream=True, stream_options={"include_usage": True}, **options
                )
            ]
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            refusal = "".join(d.refusal or "" for d in deltas)
            calls = [call for d in deltas for call in d.tool_calls or []]
            extra = chunks[-1].model_extra
        else:
            completion = await client(chain).chat.completions.create(**options)
            refusal, calls = completion.choices[0].message.refusal or "", completion.choices[0].message.tool_calls
            extra = completion.model_extra
    finally:
        chain.premium.refusal_text = before
    assert extra is not None and extra["x_router"]["escalated"] is True
    assert calls and refusal == ""
