"""The prompt as a provider bills it, counted high: tool definitions, tool calls in the history, names and
framing all count; long texts are counted exactly in chunks, and counting stops once past the limit."""

from __future__ import annotations

import json
from decimal import Decimal

from llmrouter.registry import ModelSpec
from llmrouter.tokens import (
    TOOL_USE_FRAMING,
    count_message_tokens,
    count_prompt_tokens,
    count_text_tokens,
    count_tokens,
)
from llmrouter.v1 import common_pb2
from services.router.costs import affordable_output, worst_pico

NO_LIMIT = 10**9
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather now in a city, in degrees Celsius and words.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALLS = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]


def message(role: str, content: str, **fields: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content, **fields)


async def test_tool_schemas_and_tool_calls_raise_the_input_estimate() -> None:
    history = [message("system", "Be brief."), message("user", "Weather in Oslo?")]
    plain = await count_prompt_tokens(history, "", False, NO_LIMIT)
    assert plain >= count_message_tokens(history)  # never below what OpenAI bills for the text alone

    offered = json.dumps({"tools": TOOLS, "tool_choice": "auto"})
    with_tools = await count_prompt_tokens(history, offered, True, NO_LIMIT)
    assert with_tools >= plain + count_tokens(json.dumps(TOOLS)) + TOOL_USE_FRAMING

    called = [
        *history,
        message("assistant", "", tool_calls_json=json.dumps(CALLS)),
        message("tool", "12 degrees, rain", tool_call_id="call_1", name="get_weather"),
    ]
    answered = await count_prompt_tokens(called, offered, True, NO_LIMIT)
    assert answered >= with_tools + count_tokens(json.dumps(CALLS)) + count_tokens("12 degrees, rain")


async def test_long_texts_are_counted_exactly_in_chunks() -> None:
    text = " ".join(f"word{i}, and then some more text;" for i in range(20_000))  # ~700 kB, many chunks
    messages = [message("user", text)]
    assert await count_prompt_tokens(messages, "", False, NO_LIMIT) == count_message_tokens(messages)


async def test_an_answer_is_counted_in_chunks_exactly_or_high() -> None:
    """count_text_tokens, which counts answers (megabytes from a hostile upstream) in turns of the event loop."""
    text = " ".join(f"word{i}, and then some more text;" for i in range(20_000))
    assert await count_text_tokens(text) == count_tokens(text)
    assert await count_text_tokens("x" * 100_000) >= count_tokens("x" * 100_000)


async def test_a_run_without_spaces_is_cut_and_counted_high() -> None:
    text = "x" * 100_000  # one pre-tokenizer piece: cut, and each cut counts a token more
    messages = [message("user", text)]
    assert await count_prompt_tokens(messages, "", False, NO_LIMIT) >= count_message_tokens(messages)


async def test_counting_stops_once_past_the_limit() -> None:
    huge = [message("user", "lorem ipsum dolor sit amet " * 100_000)]  # ~500k tokens
    counted = await count_prompt_tokens(huge, "", False, 1_000)
    assert 1_000 < counted < 10_000


def test_affordable_output_is_the_most_an_amount_pays_for() -> None:
    model = ModelSpec(
        name="m",
        provider="p",
        tier="t",
        input_usd_per_mtok=Decimal("2.5"),
        output_usd_per_mtok=Decimal("7.654321"),
        context_window=100_000,
        quality_prior=0.5,
    )
    for input_tokens, pico in [
        (0, 0),
        (10, 10**6),
        (1234, 987_654_321),
        (50_000, 10**12),
        (3, 7_654_321 * 5 + 7_500_000),
    ]:
        n = affordable_output(model, input_tokens, pico)
        assert worst_pico(model, input_tokens, max(n, 0)) <= pico or n < 0
        assert worst_pico(model, input_tokens, n + 1) > pico
    assert affordable_output(model, 1000, 1) < 0  # the input alone costs more
