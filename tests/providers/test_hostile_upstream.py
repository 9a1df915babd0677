"""The providers service against upstreams that misbehave on the wire, each a raw server on loopback: redirects
(followed nowhere, least of all to another host with the key), answers and stream events whose fields have the
wrong JSON type (a bad response, never an unexpected exception that wedges a half-open circuit), tool input
before its tool_use block, a stream that never stops sending, and Retry-After values no caller could parse."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.registry import ProviderSpec
from services.providers.gateways import http
from services.providers.gateways.anthropic_batch import AnthropicBatches
from services.providers.gateways.base import UpstreamError
from services.providers.gateways.openai import OpenAIGateway
from tests.fakes.raw_upstream import LoopbackUpstream
from tests.providers.conftest import ANTHROPIC_KEY, providers_service
from tests.providers.helpers import collect, error_of, request, stream_to_failure


class RawUpstream(LoopbackUpstream):
    """A loopback upstream answering every request with `reply` (raw HTTP bytes, changeable between calls), and
    keeping each request's head and body."""

    def __init__(self, reply: bytes = b"", host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.reply = reply
        self.received: list[bytes] = []

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        self.received.append(head + await reader.readexactly(int(length[1]) if length else 0))
        writer.write(self.reply)
        await writer.drain()


def reply(status: int, body: bytes = b"", content_type: str = "application/json", **headers: str) -> bytes:
    fields = {"content-type": content_type, "content-length": str(len(body)), "connection": "close", **headers}
    head = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in fields.items())
    return f"HTTP/1.1 {status} Whatever\r\n{head}\r\n".encode() + body


def events(*payloads: Any, anthropic: bool = False) -> bytes:
    """A 200 event stream of `payloads` (JSON, or raw strings), ended by the connection's close."""
    frames = b""
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        kind = f"event: {json.loads(data).get('type')}\n" if anthropic and data.startswith("{") else ""
        frames += f"{kind}data: {data}\n\n".encode()
    head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    return head.encode() + frames


def openai_chunk(delta: Any = None, finish: Any = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


OPENAI_OK = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1},
    }
).encode()
MESSAGE_START = {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}}
MESSAGE_END = [
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    {"type": "message_stop"},
]


# --- redirects ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "status"), [("claude", 307), ("claude", 308), ("cheap", 307)])
async def test_a_redirect_is_followed_nowhere(tmp_path: Path, model: str, status: int) -> None:
    """A redirect to another host (here 127.0.0.2) would carry the prompt there and, for Anthropic, the x-api-key
    aiohttp keeps across hosts. It is a failure that generated nothing: unavailable, free, not retried."""
    async with RawUpstream(reply(200, OPENAI_OK), host="127.0.0.2") as elsewhere:
        moved = reply(status, location=f"{elsewhere.url}/v1/steal")
        async with RawUpstream(moved) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Generate(request(model))
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                await collect(stub, request(model))
    assert elsewhere.received == []
    assert len(upstream.received) == 2  # once each: the same redirect would come back
    for caught in (unary, streamed):
        err = error_of(caught.value)
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "UPSTREAM_UNAVAILABLE"
        assert err.metadata["upstream_status"] == str(status) and "cost_usd" not in err.metadata
        assert "127.0.0.2" not in err.message


async def test_batch_calls_follow_no_redirect() -> None:
    ended = reply(200, b'{"id": "b", "processing_status": "ended"}')
    async with RawUpstream(ended, host="127.0.0.2") as elsewhere:
        moved = reply(302, location=f"{elsewhere.url}/v1/messages/batches/b")
        async with RawUpstream(moved) as upstream:
            api = AnthropicBatches(ProviderSpec(kind="anthropic", base_url=upstream.url), ANTHROPIC_KEY)
            try:
                with pytest.raises(UpstreamError):
                    await api.poll("b")
            finally:
                await api.aclose()
    assert elsewhere.received == []


# --- fields of the wrong type ---------------------------------------------------------------------------------------

MALFORMED_STREAMS = {
    "openai delta not an object": (
        "cheap",
        events(openai_chunk(), {"choices": [{"index": 0, "delta": [1]}]}, "[DONE]"),
    ),
    "openai choice not an object": ("cheap", events({"choices": [None, 5]}, "[DONE]")),
    "openai content not a string": ("cheap", events(openai_chunk({"content": 4}), "[DONE]")),
    "openai finish not a string": ("cheap", events(openai_chunk({"content": ""}, ["stop"]), "[DONE]")),
    "openai tool arguments an object": (
        "cheap",
        events(
            openai_chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": {}}}]}),
            "[DONE]",
        ),
    ),
    "anthropic message not an object": ("claude", events({"type": "message_start", "message": "hi"}, anthropic=True)),
    "anthropic delta not an object": (
        "claude",
        events(MESSAGE_START, {"type": "content_block_delta", "index": 0, "delta": 7}, *MESSAGE_END, anthropic=True),
    ),
    "anthropic text not a string": (
        "claude",
        events(
            MESSAGE_START,
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ["4"]}},
            *MESSAGE_END,
            anthropic=True,
        ),
    ),
    "anthropic block index a list": (
        "claude",
        events(
            MESSAGE_START,
            {
                "type": "content_block_start",
                "index": [0],
                "content_block": {"type": "tool_use", "id": "t", "name": "f"},
            },
            *MESSAGE_END,
            anthropic=True,
        ),
    ),
    "anthropic error not an object": (
        "claude",
        events(MESSAGE_START, {"type": "error", "error": "overloaded"}, anthropic=True),
    ),
}
MALFORMED_ANSWERS = {
    "openai content a list": (
        "cheap",
        {"choices": [{"message": {"content": [{"type": "text"}]}, "finish_reason": "stop"}]},
    ),
    "openai tool call a number": ("cheap", {"choices": [{"message": {"content": None, "tool_calls": [1]}}]}),
    "openai finish a number": ("cheap", {"choices": [{"message": {"content": "4"}, "finish_reason": 1}]}),
    "anthropic text a number": ("claude", {"content": [{"type": "text", "text": 4}], "stop_reason": "end_turn"}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_STREAMS))
async def test_a_stream_event_of_the_wrong_shape_is_a_bad_response(tmp_path: Path, case: str) -> None:
    model, wire = MALFORMED_STREAMS[case]
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(stub, request(model))
    err = error_of(caught.value)
    # The providers' own verdict (an unknown outcome, owed at its worst case), not a bare "internal error".
    assert err.explained and err.reason == "UPSTREAM_ERROR" and err.code == grpc.StatusCode.INTERNAL, err.message
    assert len(upstream.received) == 1  # not retried: what it generated is unknown


@pytest.mark.parametrize("case", sorted(MALFORMED_ANSWERS))
async def test_an_answer_of_the_wrong_shape_is_a_bad_response(tmp_path: Path, case: str) -> None:
    model, body = MALFORMED_ANSWERS[case]
    wire = reply(200, json.dumps(body).encode())
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request(model))
    err = error_of(caught.value)
    assert err.explained and err.reason == "UPSTREAM_ERROR" and err.code == grpc.StatusCode.INTERNAL, err.message


SPARSE_CALLS = [
    {"function": {"name": "lookup", "arguments": "{}"}},  # no id, no type
    {"id": None, "type": 5, "function": {"name": "ping"}},  # a null id, a type of no shape, no arguments
    {"id": "call_3", "type": "function", "function": {"arguments": "{}", "thought": "x"}, "extra": {"sig": "s"}},
]


async def test_a_tool_call_with_fields_left_out_is_handed_on_in_openais_whole_shape(tmp_path: Path) -> None:
    """An OpenAI-compatible server may leave out a call's id, type or empty arguments: each is handed on as "" (a
    streamed call's are built so), its own fields kept. Handed on as it came, the Responses route's function_call item
    read the missing key after the answer was charged: a 500, which the SDK retried, charging it again each time."""
    body = {
        "choices": [
            {"message": {"content": None, "tool_calls": SPARSE_CALLS}, "finish_reason": "tool_calls", "index": 0}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    async with (
        RawUpstream(reply(200, json.dumps(body).encode())) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        answer = await stub.Generate(request("cheap"))
    assert json.loads(answer.tool_calls_json) == [
        {"id": "", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
        {"id": "", "type": "function", "function": {"name": "ping", "arguments": ""}},
        {
            "id": "call_3",
            "type": "function",
            "function": {"name": "", "arguments": "{}", "thought": "x"},
            "extra": {"sig": "s"},
        },
    ]


async def test_a_malformed_probe_leaves_the_circuit_able_to_recover(tmp_path: Path) -> None:
    """The half-open circuit's one probe meets a malformed answer: it is a failure, and the next probe after the
    cool-down goes out. Raised as an unexpected exception, it left the probe taken: the model refused for good."""
    async with RawUpstream(reply(500, b'{"error": {"message": "down"}}')) as upstream:
        limits: dict[str, Any] = {"breaker_failures": 1, "max_retries": 0, "breaker_cooldown_s": 0.2}
        async with providers_service(tmp_path, upstream.url, upstream.url, **limits) as stub:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Generate(request("cheap"))  # opens the circuit
            await asyncio.sleep(0.3)
            upstream.reply = events({"choices": [{"index": 0, "delta": [1]}]}, "[DONE]")
            with pytest.raises(grpc.aio.AioRpcError) as probe:
                await collect(stub, request("cheap"))
            assert error_of(probe.value).reason == "UPSTREAM_ERROR"
            await asyncio.sleep(0.3)
            upstream.reply = reply(200, OPENAI_OK)
            answer = await stub.Generate(request("cheap"))
    assert answer.content == "4"


async def test_tool_input_before_its_tool_use_block_is_a_bad_response(tmp_path: Path) -> None:
    """Out of order, the input's first piece had nowhere to go and was dropped: the caller got a tool call whose
    arguments were cut ('"Paris"}'), as if whole."""
    tool = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}
    wire = events(
        MESSAGE_START,
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_start", "index": 0, "content_block": tool},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
        anthropic=True,
    )
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(stub, request("claude"))
    assert error_of(caught.value).reason == "UPSTREAM_ERROR"


# --- JSON nested past the parser's depth ---------------------------------------------------------------------------

NESTED = b'{"error": {"message": ' + b"[" * 5000 + b"]" * 5000 + b"}}"


async def test_json_nested_past_the_parsers_depth_is_a_bad_response(tmp_path: Path) -> None:
    """json.loads raises RecursionError, not ValueError, on a few KB of '[': a bare internal error, not retried."""
    async with (
        RawUpstream(reply(200, NESTED)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, breaker_failures=10) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Generate(request("cheap"))
        upstream.reply = events(NESTED.decode())
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await collect(stub, request("claude"))
        upstream.reply = reply(503, NESTED)  # an error body: its status says enough, and it is retried
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(request("cheap"))
    for caught in (unary, streamed):
        err = error_of(caught.value)
        assert err.explained and err.reason == "UPSTREAM_ERROR" and err.code == grpc.StatusCode.INTERNAL, err.message
    err = error_of(failed.value)
    assert err.reason == "UPSTREAM_UNAVAILABLE" and err.metadata["retries"] == "2"


# --- a stream that never stops --------------------------------------------------------------------------------------


async def test_a_stream_past_its_bound_is_cut_and_charged_what_was_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream far larger than any answer (bound lowered to 1 MB here; 128 MB in service) is cut there: all of it
    was held in memory until the total timeout. What reached the caller is charged, as for any cut stream."""
    monkeypatch.setattr(http, "MAX_STREAM_BYTES", 1 << 20, raising=False)
    piece = openai_chunk({"content": "x" * 1000})
    wire = events(*[piece] * 3000, openai_chunk({}, "stop"), "[DONE]")  # 3 MB
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        deltas, err = await stream_to_failure(stub, request("cheap"))
    assert err.reason == "STREAM_INTERRUPTED" and err.metadata["cause"] == "UPSTREAM_ERROR"
    served = "".join(deltas)
    assert 0 < len(served) < 1 << 20
    assert int(err.metadata["output_tokens"]) > 0 and err.metadata["estimated"] == "true"


# --- Retry-After ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry_after_ms": "1500"}, "2"),  # OpenAI's milliseconds: 1.5 s
        ({"retry_after": "1e400"}, "86400"),  # overflows to infinity
        ({"retry_after": "99999999999"}, "86400"),
        ({"retry_after": "HTTP-DATE"}, "31"),  # ~30.5 s from now
    ],
)
async def test_retry_after_reaches_callers_in_whole_seconds(
    tmp_path: Path, headers: dict[str, str], expected: str
) -> None:
    """The edge sends retry_after_s as its Retry-After header, which is whole seconds: '1.5', '30.49' or 'inf'
    made urllib3's Retry raise InvalidHeader."""
    if headers.get("retry_after") == "HTTP-DATE":
        headers = {"retry_after": formatdate(time.time() + 30.5, usegmt=True)}  # the date is whole seconds
    body = b'{"error": {"type": "rate_limit_error", "message": "slow down"}}'
    async with (
        RawUpstream(reply(429, body, **headers)) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, max_retries=0) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request("claude"))
    wait = error_of(caught.value).metadata["retry_after_s"]
    assert re.fullmatch(r"\d+", wait), wait
    if headers.get("retry_after", "").endswith("GMT"):
        assert 29 <= int(wait) <= 31
    else:
        assert wait == expected


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_probe_that_meets_a_gateways_own_bug_frees_the_circuit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """Whatever a gateway raises that no one foresaw, the half-open circuit's one probe is given back: the next call
    goes out, rather than the model refused as CIRCUIT_OPEN until a restart."""
    async with RawUpstream(reply(500, b'{"error": {"message": "down"}}')) as upstream:
        limits: dict[str, Any] = {"breaker_failures": 1, "max_retries": 0, "breaker_cooldown_s": 0.2}
        async with providers_service(tmp_path, upstream.url, upstream.url, **limits) as stub:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Generate(request("cheap"))  # opens the circuit
            await asyncio.sleep(0.3)
            with monkeypatch.context() as patched:  # a fault no gateway has today: injected
                patched.setattr(
                    OpenAIGateway, "stream" if streamed else "complete", broken_stream if streamed else broken
                )
                with pytest.raises(grpc.aio.AioRpcError) as probe:
                    await (collect(stub, request("cheap")) if streamed else stub.Generate(request("cheap")))
            assert error_of(probe.value).reason != "CIRCUIT_OPEN"
            upstream.reply = reply(200, OPENAI_OK)
            answer = await stub.Generate(request("cheap"))  # the next probe goes out
    assert answer.content == "4"


async def broken(*args: Any) -> Any:
    raise RuntimeError("a gateway's own bug")


async def broken_stream(*args: Any) -> AsyncGenerator[Any, None]:
    raise RuntimeError("a gateway's own bug")
    yield  # an async generator, as a gateway's stream is
