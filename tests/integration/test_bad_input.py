"""Bad input at the edge and at the router: a clear 4xx (OpenAI's error body) or INVALID_ARGUMENT with
details, never a traceback, a hang or a dead service."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.edge.settings import EdgeSettings
from tests.integration.conftest import Chain, free_port, start_edge

GOOD = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
LONG_PROMPT = "lorem ipsum dolor sit amet " * 30_000  # ~150k tokens: over both context windows

CASES = [
    ("invalid json", b'{"model": "auto", "messages": [', 400, "invalid_json"),
    ("invalid utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "invalid_json"),
    ("not an object", b"[1, 2, 3]", 400, "invalid_json"),
    ("messages missing", json.dumps({"model": "auto"}).encode(), 400, "invalid_value"),
    ("messages empty", json.dumps({"messages": []}).encode(), 400, "invalid_value"),
    ("messages wrong type", json.dumps({"messages": "hello"}).encode(), 400, "invalid_value"),
    ("unknown role", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "invalid_value"),
    ("content wrong type", json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400, "invalid_value"),
    ("max_tokens negative", json.dumps({**GOOD, "max_tokens": -5}).encode(), 400, "invalid_value"),
    ("max_tokens a string", json.dumps({**GOOD, "max_tokens": "5"}).encode(), 400, "invalid_value"),
    ("max_tokens beyond int64", json.dumps({**GOOD, "max_tokens": 2**70}).encode(), 400, "invalid_value"),
    ("max_latency_ms beyond int64", json.dumps({**GOOD, "max_latency_ms": 2**70}).encode(), 400, "invalid_value"),
    ("temperature out of range", json.dumps({**GOOD, "temperature": 9}).encode(), 400, "invalid_value"),
    ("stream not a bool", json.dumps({**GOOD, "stream": "yes"}).encode(), 400, "invalid_value"),
    ("max_cost_usd negative", json.dumps({**GOOD, "max_cost_usd": "-1"}).encode(), 400, None),
    ("max_cost_usd not a number", json.dumps({**GOOD, "max_cost_usd": "lots"}).encode(), 400, None),
    # Once 500s (decimal.Overflow in pico-dollars) and a router event loop stalled for seconds by int(1e300012).
    ("max_cost_usd past decimal range", json.dumps({**GOOD, "max_cost_usd": "1e999999"}).encode(), 400, None),
    ("max_cost_usd with a huge exponent", json.dumps({**GOOD, "max_cost_usd": "1e300000"}).encode(), 400, None),
    (
        "tool call arguments not a string",
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]},
                ]
            }
        ).encode(),
        400,
        "invalid_value",
    ),
    ("only empty content", json.dumps({"messages": [{"role": "user", "content": "  "}]}).encode(), 400, None),
    ("unknown model", json.dumps({**GOOD, "model": "gpt-17"}).encode(), 404, "model_not_found"),
    (
        "prompt over every context window",
        json.dumps({"messages": [{"role": "user", "content": LONG_PROMPT}]}).encode(),
        400,
        "context_length_exceeded",
    ),
    ("no model within max_cost_usd", json.dumps({**GOOD, "max_cost_usd": 0}).encode(), 400, "no_eligible_model"),
]


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_bad_request_gets_a_clear_openai_error(
    chain: Chain, body: bytes, status: int, code: str | None, stream: bool
) -> None:
    if stream:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None  # stays as broken as it was
        if isinstance(parsed, dict) and "stream" not in parsed:
            body = json.dumps({**parsed, "stream": True}).encode()
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(
            f"{chain.base_url}/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert error["message"] and error["type"]
        assert "Traceback" not in reply.text
        if code:
            assert error["code"] == code
        # The service keeps serving.
        assert (await http.post(f"{chain.base_url}/chat/completions", json=GOOD)).status_code == 200


async def test_oversized_body_is_413(chain: Chain) -> None:
    settings = EdgeSettings(port=free_port(), router_addr=chain.router_addr, max_body_bytes=1000)
    server, task, channel = await start_edge(settings)
    try:
        async with httpx.AsyncClient() as http:
            reply = await http.post(f"http://127.0.0.1:{settings.port}/v1/chat/completions", content=b"x" * 5000)
        error = reply.json()["error"]
        assert reply.status_code == 413 and (error["code"], error["type"]) == (
            "request_too_large",
            "invalid_request_error",
        )
    finally:
        server.should_exit = True
        await task
        await channel.close()


async def test_unknown_route_and_method(chain: Chain) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{chain.base_url}/nothing")).json()["error"]["code"] == "not_found"
        reply = await http.get(f"{chain.base_url}/chat/completions")
        assert reply.status_code == 405 and "error" in reply.json()
        assert (await http.get(f"{chain.base_url}/models/nope")).status_code == 404


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (router_pb2.CompleteRequest(), "INVALID_REQUEST"),
        (router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="x", content="hi")]), "INVALID_REQUEST"),
        (
            router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content="hi")], max_tokens=-1),
            "INVALID_REQUEST",
        ),
        (
            router_pb2.CompleteRequest(
                messages=[common_pb2.ChatMessage(role="user", content="hi")], passthrough_json="[1]"
            ),
            "INVALID_REQUEST",
        ),
        (
            router_pb2.CompleteRequest(
                messages=[common_pb2.ChatMessage(role="user", content="hi")],
                passthrough_json='{"tools": ' + "[" * 100_000 + "]" * 100_000 + "}",
            ),
            "INVALID_REQUEST",
        ),
        (
            router_pb2.CompleteRequest(
                messages=[
                    common_pb2.ChatMessage(role="user", content="hi"),
                    common_pb2.ChatMessage(role="assistant", tool_calls_json="[" * 100_000 + "]" * 100_000),
                ]
            ),
            "INVALID_REQUEST",
        ),
    ],
    ids=[
        "no messages",
        "bad role",
        "negative max_tokens",
        "passthrough not an object",
        "passthrough nested too deep",
        "tool calls nested too deep",
    ],
)
async def test_router_rejects_bad_requests_with_details(
    chain: Chain, request_: router_pb2.CompleteRequest, reason: str
) -> None:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router_pb2_grpc.RouterStub(channel).Complete(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ServiceError.from_rpc_error(err.value).reason == reason


async def test_router_rejects_invalid_utf8(chain: Chain) -> None:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/llmrouter.v1.Router/Complete")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\x0a\x06\x12\x04\xff\xfe\xfd\xfc", timeout=10)  # messages[0].content with bad UTF-8
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
async def test_max_tokens_past_the_context_window_says_so_not_that_the_prompt_is_too_long(
    chain: Chain, path: str
) -> None:
    """A short prompt whose max_tokens does not fit the named model's window (cheap-model: 4096) was told 'the prompt
    is longer than the model's context window'. OpenAI's 400 names the conversation (param `messages`) and the
    completion's share: so does the router's, which the edge returns as it is (it holds no provider's text)."""
    request = (
        {**GOOD, "model": "cheap-model", "max_tokens": 4090}
        if path == "/chat/completions"
        else {"model": "cheap-model", "input": "hello", "max_output_tokens": 4090}
    )
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}{path}", json=request)
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "context_length_exceeded", reply.text
    assert "with an answer of up to 4090 tokens" in error["message"] and "4096" in error["message"], error["message"]
    assert "longer than" not in error["message"]
    assert error["param"] == ("messages" if path == "/chat/completions" else "input")


async def test_tools_over_the_named_models_window_by_themselves_are_named(chain: Chain) -> None:
    """Tools over cheap-model's window (4096) by themselves, under strong-model's: the request naming cheap-model is
    refused naming `tools`, counted alone at that refusal (routing.planned), not at every admission."""
    tool = {"type": "function", "function": {"name": "f", "description": "lorem ipsum " * 3_000, "parameters": {}}}
    request = {**GOOD, "model": "cheap-model", "tools": [tool]}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=request)
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "context_length_exceeded", reply.text
    assert error["param"] == "tools" and "tools alone, rendered into the prompt, is over 4096" in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": %s}'),
        ("/completions", '{"prompt": "hi", "max_tokens": %s}'),
        ("/responses", '{"input": "hi", "max_output_tokens": %s}'),
        ("/batches", '{"input_file_id": "file-x", "metadata": {"a": %s}}'),
    ],
)
async def test_an_integer_of_thousands_of_digits_is_refused_in_the_callers_terms(
    chain: Chain, path: str, body: str
) -> None:
    """Python's own words for it advised calling sys.set_int_max_str_digits(), which no caller can."""
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}{path}", content=body % ("9" * 5000))
    error = reply.json()["error"]
    assert (reply.status_code, error["code"]) == (400, "invalid_json"), reply.text
    assert error["message"] == (
        "request body is not valid JSON: an integer of more than 4300 digits is past a number's range"
    )
