"""An answer larger than one gRPC reply can carry (16 MiB: the content, or a stream's final chunk, which repeats the
text its deltas delivered) from an upstream that wrote far past any honest answer (128k tokens are about 1 MB). Sent,
the reply failed in gRPC itself, a bare RESOURCE_EXHAUSTED: no usage for what the upstream bills, and a "rate limit"
(429) to a caller. It fails as the service's own error instead: a unary answer as a malformed one, a stream as one cut
after what it delivered, with its usage."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from tests.providers.conftest import providers_service
from tests.providers.helpers import cost, error_of, request, stream_to_failure
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk, reply

PIECE = "x" * (6 << 20)  # each delta fits a reply; the three of them do not
OUTPUT_TOKENS = 3_000_000  # about what the text counts to, past the max_tokens the call was sent
MAX_TOKENS = 4096  # the registry's max_output_tokens, which the call was sent: the most its upstream bills


async def test_a_unary_answer_past_a_reply_is_a_malformed_answer(tmp_path: Path) -> None:
    answer = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": PIECE * 3}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": OUTPUT_TOKENS},
    }
    async with (
        RawUpstream(reply(200, json.dumps(answer).encode())) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request("cheap"))
    err = error_of(caught.value)
    assert err.explained and err.code == grpc.StatusCode.INTERNAL and err.reason == "UPSTREAM_ERROR", err.message
    assert len(upstream.received) == 1  # generated and billed: never asked again


async def test_a_stream_past_a_reply_fails_with_its_usage(tmp_path: Path) -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": OUTPUT_TOKENS}}
    piece = openai_chunk({"content": PIECE})
    wire = events(piece, piece, piece, openai_chunk({}, "stop"), usage, "[DONE]")
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        deltas, err = await stream_to_failure(stub, request("cheap"))
    assert "".join(deltas) == PIECE * 3  # all of it delivered, each delta in a reply of its own
    assert err.explained and err.reason == "STREAM_INTERRUPTED", err.message
    assert err.metadata["cause"] == "UPSTREAM_ERROR"
    # Its usage as any answer's: the report past max_tokens charged max_tokens (output_charged), flagged estimated.
    assert (err.metadata["input_tokens"], err.metadata["output_tokens"]) == ("10", str(MAX_TOKENS))
    assert err.metadata["estimated"] == "true"
    assert Decimal(err.metadata["cost_usd"]) == Decimal(cost(10, MAX_TOKENS, "0.15", "0.60"))
