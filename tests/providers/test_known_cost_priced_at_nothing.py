"""A stream whose attempts fail with a known cost after the upstream began answering (an error event mid-stream: the
prompt and the tool calls so far are billed) over a model the providers' registry prices at 0: a free model, or their
registry, reloaded on its own, at a price the router did not admit the request at. The failure tells the tokens all
the same: the router prices them at its own prices. Left out (priced at nothing here, so once taken for nothing to
tell), the router had no measure and charged tokens the upstream bills 0. Real providers service, loopback upstreams
speaking the OpenAI and Anthropic wire."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from llmrouter.errors import USAGE_FINAL
from tests.providers.conftest import model_entry, providers_service
from tests.providers.helpers import request, stream_to_failure
from tests.providers.test_error_before_answering import ANTHROPIC_ERROR, OPENAI_ERROR
from tests.providers.test_hostile_upstream import MESSAGE_START, RawUpstream, events, openai_chunk

CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
# Answering (a tool call begun; Anthropic's message_start, which reports the input), then an error: retried, as a
# 5xx would be, and every attempt fails so.
OPENAI_CUT = events(openai_chunk({"role": "assistant", "tool_calls": [CALL]}), OPENAI_ERROR)
ANTHROPIC_CUT = events(MESSAGE_START, ANTHROPIC_ERROR, anthropic=True)
FREE = [
    model_entry("free-openai", "fakeai", "economy", "0", "0", upstream="cheap-upstream-v1"),
    model_entry("free-claude", "fakeanthropic", "premium", "0", "0", upstream="claude-fake-20250101"),
]


@pytest.mark.parametrize(("model", "wire"), [("free-openai", OPENAI_CUT), ("free-claude", ANTHROPIC_CUT)])
async def test_a_known_cost_failure_priced_at_nothing_tells_the_tokens_it_consumed(
    tmp_path: Path, model: str, wire: bytes
) -> None:
    async with (
        RawUpstream(wire) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, extra_models=FREE) as stub,
    ):
        deltas, err = await stream_to_failure(stub, request(model, usage_final=True))
    assert deltas == [""] * len(deltas)  # nothing delivered: `consumed` chunks alone (read as empty deltas)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"), json.dumps(err.metadata)
    attempts = int(err.metadata["retries"]) + 1
    assert attempts > 1  # retried: the count covers every attempt
    assert int(err.metadata["input_tokens"]) >= attempts  # each attempt's prompt, billed by the upstream
    assert err.metadata["cost_usd"] == "0"  # the providers' price, which the router does not charge
    assert USAGE_FINAL not in err.metadata  # a known cost, no unknown outcome to settle


async def test_the_anthropic_failure_tells_the_input_its_upstream_reported(tmp_path: Path) -> None:
    async with (
        RawUpstream(ANTHROPIC_CUT) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, extra_models=FREE, max_retries=0) as stub,
    ):
        _, err = await stream_to_failure(stub, request("free-claude"))
    assert err.metadata["input_tokens"] == "10"  # message_start's count, not the providers' estimate of the prompt
