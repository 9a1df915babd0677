"""finish_reason "error": an OpenAI-compatible upstream (OpenRouter, some servers) saying the generation failed
part-way, with no error object. Served as any unknown finish reason is ("stop"), the answer cut short went out as
whole. A stream is now a cut one (its caller told, what it delivered charged, the usage that follows the finish read
first); before any of it was delivered, it is retried, what the attempt consumed charged, as for an error event; a
unary answer is a malformed one, owed its worst case."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, cost, error_of, request, stream_to_failure
from tests.providers.test_error_before_answering import OPENAI_ANSWER, SequencedUpstream
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk, reply


def usage(input_tokens: int, output_tokens: int) -> dict[str, object]:
    return {"choices": [], "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}}


async def test_a_stream_that_failed_part_way_is_cut_and_charged_its_usage(tmp_path: Path) -> None:
    wire = events(
        openai_chunk({"role": "assistant", "content": "The answer"}),
        openai_chunk({"content": " is"}),
        openai_chunk({}, "error"),
        usage(10, 7),  # more than the text delivered: what it generated and bills
        "[DONE]",
    )
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        deltas, err = await stream_to_failure(stub, request("cheap"))
    assert "".join(deltas) == "The answer is"
    assert err.reason == "STREAM_INTERRUPTED" and err.metadata["cause"] == "UPSTREAM_UNAVAILABLE", err.message
    told = err.metadata
    assert (told["input_tokens"], told["output_tokens"], told["estimated"]) == ("10", "7", "false")
    assert Decimal(err.metadata["cost_usd"]) == Decimal(cost(10, 7, "0.15", "0.60"))
    assert len(upstream.received) == 1  # never again once a token reached the caller


async def test_a_stream_that_failed_without_saying_its_usage_is_charged_what_it_delivered(tmp_path: Path) -> None:
    wire = events(openai_chunk({"role": "assistant", "content": "The answer"}), openai_chunk({}, "error"), "[DONE]")
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        deltas, err = await stream_to_failure(stub, request("cheap"))
    assert deltas == ["The answer"] and err.reason == "STREAM_INTERRUPTED", err.message
    assert int(err.metadata["output_tokens"]) == 2 and err.metadata["estimated"] == "true"


async def test_a_stream_that_failed_before_answering_is_retried_its_input_charged(tmp_path: Path) -> None:
    failed = events(openai_chunk({"role": "assistant", "content": ""}), openai_chunk({}, "error"), usage(10, 0))
    async with (
        SequencedUpstream(failed, OPENAI_ANSWER) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        deltas, final = await collect(stub, request("cheap"))
    assert final is not None and deltas == ["4"] and final.finish_reason == "stop", json.dumps(str(final))
    assert final.retries == 1 and len(upstream.received) == 2
    # The failed attempt's input, as it reported it, on top of the answer's own 10 in and 1 out.
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.estimated) == (20, 1, False)


async def test_a_unary_answer_that_failed_part_way_is_a_malformed_answer(tmp_path: Path) -> None:
    answer = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer"}, "finish_reason": "error"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
    }
    async with (
        RawUpstream(reply(200, json.dumps(answer).encode())) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request("cheap"))
    err = error_of(caught.value)
    assert err.code == grpc.StatusCode.INTERNAL and err.reason == "UPSTREAM_ERROR", err.message
    assert len(upstream.received) == 1  # what it generated is unknown: never asked again
