"""A stream cut after text reached the caller, while the upstream was streaming a tool call (by the upstream, or by
the call's deadline): the call's arguments were generated and sent (the upstream bills them), so the interrupted
stream's charge counts them beside the text delivered, as a retried attempt's charge does (dispatch.Wasted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrouter.tokens import count_tokens
from tests.fakes.raw_upstream import StallingUpstream
from tests.providers.conftest import providers_service
from tests.providers.helpers import request, stream_to_failure
from tests.providers.test_hostile_upstream import MESSAGE_START, RawUpstream, events, openai_chunk

TEXT = "Let me look that up."
ARGUMENTS = json.dumps({"query": "the population of every city in Europe " * 40})


def openai_wire() -> bytes:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": ""}}
    pieces = [ARGUMENTS[i : i + 100] for i in range(0, len(ARGUMENTS), 100)]
    fragments = [openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
    # Cut before the finish reason, the usage chunk and [DONE]: the connection closes.
    text = openai_chunk({"role": "assistant", "content": TEXT})
    return events(text, openai_chunk({"tool_calls": [call]}), *fragments)


def anthropic_wire() -> bytes:
    pieces = [ARGUMENTS[i : i + 100] for i in range(0, len(ARGUMENTS), 100)]
    return events(
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}},
        },
        *[
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": p}}
            for p in pieces
        ],
        anthropic=True,
    )


@pytest.mark.parametrize(("model", "wire"), [("cheap", openai_wire()), ("claude", anthropic_wire())])
async def test_a_tool_call_cut_after_text_was_delivered_is_charged(tmp_path: Path, model: str, wire: bytes) -> None:
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        deltas, err = await stream_to_failure(stub, request(model))
    assert err.reason == "STREAM_INTERRUPTED" and "".join(deltas) == TEXT
    # The text delivered and the tool call streamed so far, each at least as many tokens as they count to.
    assert int(err.metadata["output_tokens"]) >= count_tokens(TEXT) + count_tokens(ARGUMENTS)


@pytest.mark.parametrize(("model", "wire"), [("cheap", openai_wire()), ("claude", anthropic_wire())])
async def test_a_tool_call_under_way_at_the_deadline_after_text_is_charged(
    tmp_path: Path, model: str, wire: bytes
) -> None:
    """Cut by the call's own deadline rather than by the upstream, the tool call streamed so far is charged too."""
    async with (
        StallingUpstream(wire) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, total_timeout_s=1.0, read_timeout_s=10.0) as stub,
    ):
        deltas, err = await stream_to_failure(stub, request(model))
    assert err.reason == "STREAM_INTERRUPTED" and err.metadata["cause"] == "UPSTREAM_TIMEOUT"
    assert "".join(deltas) == TEXT
    assert int(err.metadata["output_tokens"]) >= count_tokens(TEXT) + count_tokens(ARGUMENTS)
