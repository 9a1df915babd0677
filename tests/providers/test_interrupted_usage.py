"""A stream cut after its upstream said how much it generated (Anthropic's message_delta, OpenAI's usage chunk) but
before it ended (message_stop, [DONE]): the answer reached the caller, and the upstream bills the tokens it counted.
The interrupted stream is charged that count, not the fewer tokens the text delivered counts to here (Claude's and
Llama's tokenizers cut text finer than cl100k_base)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrouter.tokens import count_tokens
from tests.providers.conftest import model_entry, providers_service
from tests.providers.helpers import request, stream_to_failure
from tests.providers.test_hostile_upstream import MESSAGE_START, RawUpstream, events, openai_chunk

TEXT = "The answer, written out in full, is four."
REPORTED_OUTPUT = 3 * count_tokens(TEXT)  # the upstream's own tokenizer: finer than cl100k_base


def anthropic_wire() -> bytes:
    return events(
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": REPORTED_OUTPUT}},
        anthropic=True,
    )  # ended by the connection's close, before message_stop


def openai_wire() -> bytes:
    counts = {"prompt_tokens": 10, "completion_tokens": REPORTED_OUTPUT}
    usage = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": counts}
    return events(openai_chunk({"role": "assistant", "content": TEXT}), usage)  # no finish reason, no [DONE]


@pytest.mark.parametrize(("model", "wire"), [("claude", anthropic_wire()), ("cheap", openai_wire())])
async def test_a_stream_cut_after_its_usage_is_charged_the_usage(tmp_path: Path, model: str, wire: bytes) -> None:
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        deltas, err = await stream_to_failure(stub, request(model))
    assert err.reason == "STREAM_INTERRUPTED" and "".join(deltas) == TEXT
    assert err.metadata["output_tokens"] == str(REPORTED_OUTPUT)
    assert err.metadata["input_tokens"] == "10" and err.metadata["estimated"] == "false"


# Counts differ between the two encodings: a stream of it cut with no usage shows which one counted it.
UNREPORTED = "Voilà: naïve façades, 12345678 tokenised différemment — " * 4


@pytest.mark.parametrize("tokenizer", ["o200k_base", "cl100k_base", "utf8_bytes"])
async def test_a_stream_cut_before_its_usage_is_counted_with_the_models_own_encoding(
    tmp_path: Path, tokenizer: str
) -> None:
    """No count from the upstream: its text is counted with the model's own tokenizer where it is bundled (gpt-4o's
    o200k_base counts fewer tokens than cl100k_base: counted with the other, the caller paid for tokens never
    billed), else with cl100k_base."""
    assert count_tokens(UNREPORTED, "o200k_base") != count_tokens(UNREPORTED, "cl100k_base")
    wire = events(openai_chunk({"role": "assistant", "content": UNREPORTED}))  # no usage, no finish, no [DONE]
    model = model_entry("counted", "fakeai", "premium", "2.50", "10.00", tokenizer=tokenizer)
    async with (
        RawUpstream(wire) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, extra_models=[model]) as stub,
    ):
        deltas, err = await stream_to_failure(stub, request("counted"))
    assert err.reason == "STREAM_INTERRUPTED" and "".join(deltas) == UNREPORTED
    counted = count_tokens(UNREPORTED, "o200k_base" if tokenizer == "o200k_base" else "cl100k_base")
    assert err.metadata["output_tokens"] == str(counted)
    assert err.metadata["estimated"] == "true"
