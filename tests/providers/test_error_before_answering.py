"""An upstream stream whose first event is an error (Anthropic's overloaded_error after its 200, OpenAI's error
object) never began answering: it consumed nothing, like a 5xx status, so the retry is free and nothing is charged
for the failed attempt. Taken as consumed, the prompt was charged at its bound for nothing, and that charge used up
the retry budget, so the free retry was not made at all (with the router's budget for a one-model plan, 0)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, request
from tests.providers.test_hostile_upstream import MESSAGE_END, MESSAGE_START, RawUpstream, events, openai_chunk

ANTHROPIC_ERROR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
OPENAI_ERROR = {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}
ANTHROPIC_ANSWER = events(
    MESSAGE_START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "4"}},
    *MESSAGE_END,
    anthropic=True,
)
USAGE = {
    "id": "c",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1},
}
OPENAI_ANSWER = events(openai_chunk({"role": "assistant", "content": "4"}), openai_chunk({}, "stop"), USAGE, "[DONE]")


class SequencedUpstream(RawUpstream):
    """A RawUpstream answering each request with the next of `replies` (the last one again once they run out)."""

    def __init__(self, *replies: bytes) -> None:
        super().__init__(replies[0])
        self.replies = list(replies)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        await super()._answer(reader, writer)


@pytest.mark.parametrize(
    ("model", "failing", "answer", "output"),
    [
        ("claude", events(ANTHROPIC_ERROR, anthropic=True), ANTHROPIC_ANSWER, 3),
        ("cheap", events(OPENAI_ERROR), OPENAI_ANSWER, 1),
    ],
)
async def test_an_error_as_the_first_event_is_retried_free(
    tmp_path: Path, model: str, failing: bytes, answer: bytes, output: int
) -> None:
    async with (
        SequencedUpstream(failing, answer) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        deltas, final = await collect(stub, request(model, retry_budget_usd="0"))
    assert final is not None and final.retries == 1 and deltas == ["4"], json.dumps(str(final))
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, output)  # the answer's alone
    assert not final.usage.estimated
