"""A gRPC caller's tool calls and results are held to the pairing the edge holds a REST caller's to (one rule:
llmrouter/tool_pairing.py): a call the tool messages right after its turn do not answer, a call answered twice, two
calls of one id in a turn, a result answering no call of the turn before it, are an INVALID_ARGUMENT naming the field,
on Complete, CompleteStream and Decide, before anything is routed, admitted or sent; the edge names the same field. Sent
on, OpenAI and Anthropic refused them and a local model answered them, as routing chose. A real router gRPC server over
the in-process store, a providers gRPC server on loopback answering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.edge.openai_api import ApiError, parse_request
from services.router.store import MemoryStore
from tests.router.servicer_kit import router_stub, served_router
from tests.router.test_cache_money import Answering

USER = {"role": "user", "content": "look it up"}


def calling(*ids: Any) -> dict[str, Any]:
    calls = [{"id": i, "type": "function", "function": {"name": "look", "arguments": "{}"}} for i in ids]
    return {"role": "assistant", "content": "", "tool_calls": calls}


def result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "blue"}


# (the messages, the field named, what the message says)
REFUSED: list[tuple[list[dict[str, Any]], str, str]] = [
    ([USER, calling("c1")], "messages[1].tool_calls", "did not have response messages: c1"),
    ([USER, calling("c1", "c2"), result("c2"), USER], "messages[1].tool_calls", "did not have response messages: c1"),
    (
        [USER, calling("c1"), result("c1"), result("c1")],
        "messages[3].tool_call_id",
        "Duplicate value for 'tool_call_id' of 'c1', in messages[2] and messages[3].",
    ),
    (
        [USER, calling("c1", "c1"), result("c1")],
        "messages[1].tool_calls[1].id",
        "Duplicate value for 'id' of 'c1', in messages[1].tool_calls[0] and messages[1].tool_calls[1]",
    ),
    ([USER, calling("c1"), result("c1"), USER, result("c1")], "messages[4].tool_call_id", "must be a response"),
    ([USER, calling("c1"), result("c1"), result("c2")], "messages[3].tool_call_id", "must be a response"),
]

# Fields of one role's messages on another's, which OpenAI refuses: a user's tool calls went to Anthropic inside a user
# turn (its 400), and to a local model as the user's own words.
MISPLACED: list[tuple[list[dict[str, Any]], str, str]] = [
    (
        [{**calling("c1"), "role": "user", "content": "x"}, result("c1")],
        "messages[0].tool_calls",
        "Invalid parameter: only messages with role 'assistant' can have 'tool_calls'; messages[0] has role 'user'.",
    ),
    ([{**calling("c1"), "role": "system", "content": "x"}, USER], "messages[0].tool_calls", "has role 'system'"),
    (
        [USER, calling("c1"), {**result("c1"), "tool_calls": calling("c2")["tool_calls"]}],
        "messages[2].tool_calls",
        "role 'tool'",
    ),
    (
        [{**USER, "tool_call_id": "c1"}],
        "messages[0].tool_call_id",
        "Invalid parameter: only messages with role 'tool' can have 'tool_call_id'; messages[0] has role 'user'.",
    ),
    ([USER, {**calling("c1"), "tool_call_id": "c1"}, result("c1")], "messages[1].tool_call_id", "role 'assistant'"),
]
REFUSED += MISPLACED


def test_misplaced_tool_fields_are_openais_400_at_the_edge() -> None:
    for messages, field, says in MISPLACED:
        with pytest.raises(ApiError) as refused:
            parse_request(json.dumps({"messages": messages}).encode())
        assert (refused.value.status, refused.value.param, refused.value.code) == (400, field, "invalid_value")
        assert says in refused.value.message


def asked(messages: list[dict[str, Any]]) -> router_pb2.CompleteRequest:
    chat = [
        common_pb2.ChatMessage(
            role=m["role"],
            content=m["content"],
            tool_call_id=m.get("tool_call_id", ""),
            tool_calls_json=json.dumps(m["tool_calls"]) if "tool_calls" in m else "",
        )
        for m in messages
    ]
    return router_pb2.CompleteRequest(messages=chat, tenant="acme", model="cheap", max_tokens=50)


async def refusal(router: router_pb2_grpc.RouterStub, method: str, request: router_pb2.CompleteRequest) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method == "CompleteStream":
            async for _ in router.CompleteStream(request, timeout=10):
                pass
        else:
            await getattr(router, method)(request, timeout=10)
    return ServiceError.from_rpc_error(caught.value)


@pytest.mark.parametrize("method", ["Complete", "CompleteStream", "Decide"])
async def test_unpaired_tool_calls_are_refused_naming_the_field_before_routing(tmp_path: Path, method: str) -> None:
    provider, store = Answering(), MemoryStore()
    async with router_stub(tmp_path, store, provider) as router:
        for messages, field, says in REFUSED:
            with pytest.raises(ApiError) as at_the_edge:
                parse_request(json.dumps({"messages": messages}).encode())
            assert at_the_edge.value.param == field
            refused = await refusal(router, method, asked(messages))
            assert (refused.code, refused.reason, refused.metadata.get("field")) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_REQUEST",
                field,
            ), messages
            assert says in refused.message
        # A call's id a gRPC caller wrote as another JSON type: refused, not sent on for a gateway to trip over.
        refused = await refusal(router, method, asked([USER, calling(7), result("7")]))
        assert (refused.code, refused.metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages[1].tool_calls[0].id",
        )
        assert refused.message == "messages[1].tool_calls[0].id must be a string, got a JSON number"
    assert provider.generated == 0
    assert list(store.ledger) == []  # refused before admission: nothing charged


async def test_paired_tool_calls_are_served(tmp_path: Path) -> None:
    """Each call answered once right after its turn, in any order; an id used again in a later turn (a model writing
    `call_0` each turn) is that turn's call."""
    provider = Answering()
    messages = [USER, calling("c1", "c2"), result("c2"), result("c1"), USER, calling("c1"), result("c1")]
    async with (
        served_router(tmp_path, MemoryStore(), provider) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        parse_request(json.dumps({"messages": messages}).encode())
        answer = await router_pb2_grpc.RouterStub(channel).Complete(asked(messages), timeout=10)
    assert answer.content == "the answer to blue"
    assert provider.generated == 1


# A call's fields a gRPC caller wrote in another shape than OpenAI's (the field named). Sent on, a `function` that is no
# object failed Anthropic's gateway (the providers' INTERNAL), and the others went on for an upstream to refuse.
MISSHAPEN: list[tuple[dict[str, Any], str]] = [
    ({"id": "c1", "type": "function", "function": "look"}, "messages[1].tool_calls[0].function"),
    ({"id": "c1", "type": "function", "function": ["look"]}, "messages[1].tool_calls[0].function"),
    (
        {"id": "c1", "type": "function", "function": {"name": 5, "arguments": "{}"}},
        "messages[1].tool_calls[0].function.name",
    ),
    (
        {"id": "c1", "type": "function", "function": {"name": "look", "arguments": {"q": 1}}},
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        {"id": "c1", "type": "retrieval", "function": {"name": "look", "arguments": "{}"}},
        "messages[1].tool_calls[0].type",
    ),
    ({"id": "c1", "type": "function", "function": {"arguments": "{}"}}, "messages[1].tool_calls[0].function.name"),
]


@pytest.mark.parametrize("method", ["Complete", "CompleteStream", "Decide"])
async def test_tool_calls_of_another_shape_are_refused_naming_the_field_before_routing(
    tmp_path: Path, method: str
) -> None:
    provider, store = Answering(), MemoryStore()
    async with router_stub(tmp_path, store, provider) as router:
        for call, field in MISSHAPEN:
            messages: list[dict[str, Any]] = [
                USER,
                {"role": "assistant", "content": "", "tool_calls": [call]},
                result("c1"),
            ]
            with pytest.raises(ApiError) as at_the_edge:  # the edge refuses it too, naming the same field
                parse_request(json.dumps({"messages": messages}).encode())
            assert at_the_edge.value.param == field
            refused = await refusal(router, method, asked(messages))
            assert (refused.code, refused.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, field), call
        refused = await refusal(router, method, asked([USER, {**calling("c1"), "tool_calls": [MISSHAPEN[0][0]]}]))
        assert refused.message == "messages[1].tool_calls[0].function must be an object, got a JSON string"
    assert provider.generated == 0
    assert list(store.ledger) == []


# A call as a gRPC caller may write it, and as the providers hand on an upstream's: its id "" (an upstream's call
# without one, answered by a tool message without one), its type and arguments left out, arguments null, "" or "{}"
# (the OpenAI SDK's for a call of no parameters), parallel calls answered in any order. Its id left out is refused
# (test_tool_calls_written_sparse.py).
SPARSE_TURNS: list[dict[str, Any]] = [
    USER,
    {"role": "assistant", "content": "", "tool_calls": [{"id": "", "function": {"name": "look"}}]},
    result(""),
    USER,
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "function": {"name": "look", "arguments": None}},
            {"id": "c2", "type": "function", "function": {"name": "look", "arguments": ""}},
            {"id": "c3", "type": "function", "function": {"name": "look", "arguments": "{}"}},
        ],
    },
    result("c3"),
    result("c1"),
    result("c2"),
]


async def test_tool_calls_leaving_out_what_a_call_may_leave_out_are_served(tmp_path: Path) -> None:
    """Held to OpenAI's shape, a call is not held to more: only its function and that function's name are required."""
    provider = Answering()
    async with (
        served_router(tmp_path, MemoryStore(), provider) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        answer = await router_pb2_grpc.RouterStub(channel).Complete(asked(SPARSE_TURNS), timeout=10)
    assert answer.content == "the answer to blue"
    assert provider.generated == 1
