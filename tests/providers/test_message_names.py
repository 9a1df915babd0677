"""A provider whose upstream refuses a message's `name` (registry `message_names: false`; Groq answers it with a 400,
as the fake does) is sent the messages without it, by the real providers service, streamed, unstreamed and in a Batch
API file, and serves the request: a name only tells apart participants of one role. Any other OpenAI-compatible
upstream is sent the names as given."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.fake_groq import FakeGroq
from tests.providers.conftest import groq_providers
from tests.providers.helpers import collect

MESSAGES = [
    common_pb2.ChatMessage(role="system", content="Be brief.", name="house_rules"),
    common_pb2.ChatMessage(role="user", content="I am Ada.", name="ada"),
    common_pb2.ChatMessage(role="assistant", content="Hello Ada.", name="helper"),
    common_pb2.ChatMessage(role="user", content="What is 2+2?", name="ada"),
]
SENT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "I am Ada."},
    {"role": "assistant", "content": "Hello Ada."},
    {"role": "user", "content": "What is 2+2?"},
]


@pytest.fixture
async def stub(
    tmp_path: Path,
    groq: FakeGroq,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    async with groq_providers(tmp_path, groq, openai_fake, anthropic_fake, monkeypatch, message_names=False) as s:
        yield s


def asked(model: str, request_id: str = "t-1") -> provider_pb2.GenerateRequest:
    return provider_pb2.GenerateRequest(model=model, messages=MESSAGES, request_id=request_id)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_provider_that_refuses_names_is_sent_the_messages_without_them(
    stub: provider_pb2_grpc.ProviderStub, groq: FakeGroq, stream: bool
) -> None:
    if stream:
        deltas, final = await collect(stub, asked("llama"))
        content = "".join(deltas)
        assert final is not None and final.model == "llama"
    else:
        response = await stub.Generate(asked("llama"))
        content = response.content
    assert content == "[llama] You said: What is 2+2?"
    (sent,) = groq.requests
    assert sent.json["messages"] == SENT


async def test_its_batch_lines_are_written_without_them(stub: provider_pb2_grpc.ProviderStub, groq: FakeGroq) -> None:
    lines = [asked("llama", f"line-{i}") for i in range(2)]
    await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model="llama", requests=lines))
    (uploaded,) = groq.batches.files.values()
    bodies: list[dict[str, Any]] = [json.loads(line)["body"] for line in uploaded["content"].decode().splitlines()]
    assert [body["messages"] for body in bodies] == [SENT, SENT]


async def test_any_other_openai_compatible_upstream_is_sent_the_names(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    await stub.Generate(asked("strong"))
    names = [m.get("name") for m in openai_fake.requests[-1].json["messages"]]
    assert names == ["house_rules", "ada", "helper", "ada"]
