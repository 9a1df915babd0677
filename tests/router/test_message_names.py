"""A chat message's `name` (a participant's, as OpenAI's API takes it) is bounded and free of control characters, for
the edge's REST callers (OpenAI's 400, naming messages[<i>].name) and the router's gRPC callers (INVALID_ARGUMENT
naming the same field) alike, on Complete, CompleteStream and Decide, before anything is routed, admitted or sent:
unbounded, a 100 kB name or one holding a NUL was sent on to the upstream (which bills it as prompt) or dropped, as
routing chose. A real router gRPC server over the in-process store, a providers gRPC server on loopback answering."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from llmrouter.v1 import common_pb2, router_pb2
from services.edge.openai_api import ApiError, parse_request
from services.router.store import MemoryStore
from tests.router.servicer_kit import router_stub
from tests.router.test_cache_money import Answering
from tests.router.test_tool_pairing import refusal

BOUND = 512  # as the longest end-user id, `user` (llmrouter/passthrough.py END_USER_ID_CHARS)
CONTROL = ["a\x00b", "line\nbreak", "tab\there", "del\x7f", "c1\x85"]


def chat(name: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello", "name": name}]


def asked(name: str) -> router_pb2.CompleteRequest:
    messages = [common_pb2.ChatMessage(**m) for m in chat(name)]
    return router_pb2.CompleteRequest(messages=messages, tenant="acme", model="cheap", max_tokens=50)


def test_a_name_past_its_bound_is_openais_400_at_the_edge() -> None:
    with pytest.raises(ApiError) as refused:
        parse_request(json.dumps({"messages": chat("é" * (BOUND + 1))}).encode())  # characters, not bytes
    message = (
        f"Invalid 'messages[1].name': string too long. Expected a string with maximum length {BOUND}, but got a "
        f"string with length {BOUND + 1} instead."
    )
    assert (refused.value.status, refused.value.param, refused.value.code) == (
        400,
        "messages[1].name",
        "string_above_max_length",
    )
    assert refused.value.message == message
    request, _ = parse_request(json.dumps({"messages": chat("é" * BOUND)}).encode())
    assert request.messages[1].name == "é" * BOUND


@pytest.mark.parametrize("name", CONTROL)
def test_a_name_with_a_control_character_is_a_400_at_the_edge(name: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_request(json.dumps({"messages": chat(name)}).encode())
    assert (refused.value.status, refused.value.param, refused.value.code) == (
        400,
        "messages[1].name",
        "invalid_value",
    )
    assert refused.value.message == "Invalid 'messages[1].name': a name must not contain control characters."


@pytest.mark.parametrize("method", ["Complete", "CompleteStream", "Decide"])
async def test_a_grpc_callers_name_is_held_to_the_same_rule(tmp_path: Path, method: str) -> None:
    provider, store = Answering(), MemoryStore()
    async with router_stub(tmp_path, store, provider) as router:
        for name, says in [("n" * (BOUND + 1), "string too long"), *((c, "control characters") for c in CONTROL)]:
            refused = await refusal(router, method, asked(name))
            assert (refused.code, refused.reason, refused.metadata.get("field")) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_REQUEST",
                "messages[1].name",
            ), name
            assert says in refused.message
        assert provider.generated == 0
        assert list(store.ledger) == []  # refused before admission: nothing charged
        # At the bound, any script: served.
        assert (await router.Decide(asked("Zoë-" + "é" * (BOUND - 4)), timeout=10)).model == "cheap"
