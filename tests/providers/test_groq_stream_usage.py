"""Groq reports a stream's usage in its last choices chunk, as `x_groq.usage` (with its timings), beside the
include_usage chunk it sends when asked. Where the usage chunk is left out (as Groq streamed before it took
stream_options), the stream is still charged Groq's own counts, not the providers' estimate; where both come, it is
charged once, at the same counts. Through the real providers service against a fake speaking Groq's stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.fake_groq import FakeGroq
from tests.providers.conftest import groq_providers
from tests.providers.helpers import collect, cost


@pytest.fixture
async def stub(
    tmp_path: Path,
    groq: FakeGroq,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    async with groq_providers(tmp_path, groq, openai_fake, anthropic_fake, monkeypatch) as s:
        yield s


@pytest.mark.parametrize("usage_chunk", [False, True], ids=["x_groq-alone", "both"])
async def test_a_groq_stream_is_charged_groqs_own_counts(
    stub: provider_pb2_grpc.ProviderStub, groq: FakeGroq, monkeypatch: pytest.MonkeyPatch, usage_chunk: bool
) -> None:
    monkeypatch.setattr(groq, "honours_include_usage", usage_chunk)
    question = common_pb2.ChatMessage(role="user", content="Tell me about the sea")
    deltas, final = await collect(stub, provider_pb2.GenerateRequest(model="llama", messages=[question]))

    content, _, usage = groq.answer(groq.requests[-1].json)
    assert final is not None and "".join(deltas) == final.content == content
    assert (final.usage.input_tokens, final.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert not final.usage.estimated  # Groq's report, not the providers' count
    assert final.cost_usd == cost(usage["prompt_tokens"], usage["completion_tokens"], "0.05", "0.08")
