"""The fake OpenAI server is only useful if it is faithful: the official openai SDK must parse its replies,
streams and errors like api.openai.com's."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fakes import FakeOpenAI, Fault
from tests.fakes.server import TOOL_CUE
from tests.providers.conftest import OPENAI_KEY


@pytest.fixture
def client(openai_fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=openai_fake.base_url, api_key=OPENAI_KEY, max_retries=0)


def test_sdk_parses_a_completion(client: openai.OpenAI, openai_fake: FakeOpenAI) -> None:
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    content, _, usage = openai_fake.answer(openai_fake.requests[-1].json)
    assert completion.choices[0].message.content == content == "[m] You said: hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == usage["prompt_tokens"]


def test_sdk_parses_a_stream_with_usage(client: openai.OpenAI, openai_fake: FakeOpenAI) -> None:
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content, _, usage = openai_fake.answer(openai_fake.requests[-1].json)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == usage["completion_tokens"]


def test_sdk_sees_rate_limits_and_bad_keys(client: openai.OpenAI, openai_fake: FakeOpenAI) -> None:
    openai_fake.enqueue(Fault.error(429, retry_after=1))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "1"
    openai_fake.api_key = "another"
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def test_sdk_joins_the_streamed_tool_call_fragments(client: openai.OpenAI, openai_fake: FakeOpenAI) -> None:
    tools: list[Any] = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages: list[Any] = [{"role": "user", "content": f"find it {TOOL_CUE}"}]
    with client.chat.completions.stream(model="m", messages=messages, tools=tools) as stream:
        final = stream.get_final_completion()
    expected = openai_fake.tool_calls(openai_fake.requests[-1].json)
    assert len(expected[0]["function"]["arguments"]) > 8  # sent in several fragments
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [
        {"id": c.id, "type": c.type, "function": c.function.model_dump(include={"name", "arguments"})} for c in calls
    ] == expected
    assert final.choices[0].finish_reason == "tool_calls" and final.choices[0].message.content is None
