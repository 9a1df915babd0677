"""An upstream's error sent with a 200: a body that is an error object (no answer), or a stream's error event. Taken
for a malformed answer, a rate limit or a bad request said so went unretried and was owed its worst case; as a stream's
first event, every error was a server's, retried. Now a refusal made before a model runs (a rate limit, a bad
request, our key) is taken as its status would be, unary or as a stream's first event. A server's failure in a unary
body stays an answer lost (OpenRouter sends one when the model failed while generating, what it bills unknown), and
an error after a stream began answering stays a failure retried with what it consumed charged, or a cut stream
charged what it delivered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, error_of, request, stream_to_failure
from tests.providers.test_error_before_answering import OPENAI_ANSWER, SequencedUpstream
from tests.providers.test_hostile_upstream import OPENAI_OK, RawUpstream, events, openai_chunk, reply

ANTHROPIC_OK = json.dumps(
    {
        "type": "message",
        "content": [{"type": "text", "text": "4"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
).encode()
OK = {"cheap": OPENAI_OK, "claude": ANTHROPIC_OK}
# As each upstream words a rate limit: OpenAI's code, OpenRouter's numeric one, Anthropic's type.
RATE_LIMITS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("cheap", {"error": {"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"}}),
    "openrouter": ("cheap", {"error": {"message": "Rate limit exceeded", "code": 429}}),
    "anthropic": ("claude", {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}),
}
BAD_REQUEST = {"error": {"message": "Unknown parameter", "type": "invalid_request_error", "code": None}}
SERVER_ERROR = {"error": {"message": "The server had an error", "type": "server_error", "code": None}}


def body(payload: dict[str, Any]) -> bytes:
    return reply(200, json.dumps(payload).encode())


@pytest.mark.parametrize("upstream_kind", sorted(RATE_LIMITS))
async def test_a_rate_limit_answered_with_200_is_retried(tmp_path: Path, upstream_kind: str) -> None:
    model, error = RATE_LIMITS[upstream_kind]
    async with (
        SequencedUpstream(body(error), reply(200, OK[model])) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        answer = await stub.Generate(request(model))
    assert answer.content == "4" and answer.retries == 1 and len(upstream.received) == 2
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (10, 1)  # the answer's alone


async def test_a_rate_limit_answered_with_200_until_the_end_is_a_rate_limit(tmp_path: Path) -> None:
    _, error = RATE_LIMITS["openrouter"]
    async with (
        RawUpstream(body(error)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request("cheap"))
    err = error_of(caught.value)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "UPSTREAM_RATE_LIMITED", err.message
    assert err.metadata["upstream_status"] == "429" and len(upstream.received) == 3  # max_retries 2


async def test_a_bad_request_answered_with_200_is_a_refusal(tmp_path: Path) -> None:
    async with (
        RawUpstream(body(BAD_REQUEST)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request("cheap"))
    err = error_of(caught.value)
    # Nothing generated: no worst case owed (FAILED_PRECONDITION, not an unknown outcome), and not asked again.
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.metadata["upstream_status"] == "400", err.message
    assert "Unknown parameter" not in err.message and len(upstream.received) == 1


async def test_a_server_error_answered_with_200_stays_an_answer_lost(tmp_path: Path) -> None:
    async with (
        RawUpstream(body(SERVER_ERROR)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request("cheap"))
    err = error_of(caught.value)
    assert err.code == grpc.StatusCode.INTERNAL and err.reason == "UPSTREAM_ERROR", err.message
    assert len(upstream.received) == 1  # what the model generated before it failed is unknown: never asked again


@pytest.mark.parametrize("upstream_kind", sorted(RATE_LIMITS))
async def test_a_rate_limit_as_a_streams_first_event_is_a_rate_limit(tmp_path: Path, upstream_kind: str) -> None:
    model, error = RATE_LIMITS[upstream_kind]
    wire = events(error, anthropic=model == "claude")
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(stub, request(model))
    err = error_of(caught.value)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "UPSTREAM_RATE_LIMITED", err.message
    assert len(upstream.received) == 3 and "cost_usd" not in err.metadata


async def test_a_bad_request_as_a_streams_first_event_is_not_retried(tmp_path: Path) -> None:
    async with (
        RawUpstream(events(BAD_REQUEST)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(stub, request("cheap"))
    err = error_of(caught.value)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and len(upstream.received) == 1, err.message


async def test_a_refusal_after_the_stream_began_answering_lowers_no_charge(tmp_path: Path) -> None:
    """Said once tokens were delivered, a 'rate limit' is a cut stream charged what it delivered; said after the
    upstream began answering (a tool call's name streamed), a failure retried with that attempt's input charged."""
    _, error = RATE_LIMITS["openrouter"]
    wire = events(openai_chunk({"role": "assistant", "content": "The answer"}), error)
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        deltas, err = await stream_to_failure(stub, request("cheap"))
    assert deltas == ["The answer"] and err.reason == "STREAM_INTERRUPTED", err.message
    assert int(err.metadata["input_tokens"]) > 0 and int(err.metadata["output_tokens"]) == 2

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    began = events(openai_chunk({"role": "assistant", "tool_calls": [call]}), BAD_REQUEST)
    async with (
        SequencedUpstream(began, OPENAI_ANSWER) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        deltas, final = await collect(stub, request("cheap"))
    assert final is not None and deltas == ["4"] and final.retries == 1
    assert final.usage.input_tokens > 10 and final.usage.output_tokens > 1  # the failed attempt's on top


async def test_a_rate_limit_answered_with_200_that_reports_usage_is_an_answer_lost(tmp_path: Path) -> None:
    """An error body that says what the attempt consumed was no refusal before a model ran: retried as a rate limit,
    what it billed went uncharged. It stays an unknown outcome, owed its worst case, never asked again."""
    _, error = RATE_LIMITS["openrouter"]
    billed = {**error, "usage": {"prompt_tokens": 10, "completion_tokens": 50}}
    async with (
        SequencedUpstream(body(billed), reply(200, OPENAI_OK)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request("cheap"))
    err = error_of(caught.value)
    assert err.code == grpc.StatusCode.INTERNAL and err.reason == "UPSTREAM_ERROR", err.message
    assert len(upstream.received) == 1


async def test_a_streams_error_event_that_reports_usage_is_charged_it(tmp_path: Path) -> None:
    """An error event carrying the attempt's usage (as its first event, or after tokens, the output counted past what
    was delivered): that usage is what the attempt consumed and bills. Dropped, a first event's was retried unpaid,
    and a later one's was counted from the text delivered alone."""
    _, error = RATE_LIMITS["openrouter"]
    first = events({**error, "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    async with (
        SequencedUpstream(first, OPENAI_ANSWER) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        deltas, final = await collect(stub, request("cheap"))
    assert final is not None and deltas == ["4"] and final.retries == 1
    # The failed attempt's 10 in and 5 out on top of the answer's own 10 in and 1 out.
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.estimated) == (20, 6, False)

    cut = {**SERVER_ERROR, "usage": {"prompt_tokens": 10, "completion_tokens": 7}}
    wire = events(openai_chunk({"role": "assistant", "content": "The answer"}), cut)
    async with RawUpstream(wire) as raw, providers_service(tmp_path, raw.url, raw.url) as stub:
        deltas, err = await stream_to_failure(stub, request("cheap"))
    assert deltas == ["The answer"] and err.reason == "STREAM_INTERRUPTED", err.message
    told = err.metadata
    assert (told["input_tokens"], told["output_tokens"], told["estimated"]) == ("10", "7", "false")
