"""OpenAI's bound on a conversation's length, held through the stack: more than 2048 messages (chat) or input items
(/v1/responses) is OpenAI's 400, refused before any item is validated (one caller's 200,000 tiny items held the
edge's event loop for seconds: benchmarks/item_stall.py), and a gRPC caller's CompleteRequest past the bound is an
INVALID_ARGUMENT naming messages."""

from __future__ import annotations

import grpc
import httpx
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from llmrouter.validation import MAX_ROUTED_MESSAGES
from services.edge.openai_api import MAX_CONTENT_PARTS
from tests.integration.conftest import Chain
from tests.integration.test_chain import unique


def too_long(param: str, length: int) -> dict[str, dict[str, str]]:
    """OpenAI's answer, word for word (github.com/obot-platform/obot/issues/1009)."""
    message = (
        f"Invalid '{param}': array too long. Expected an array with maximum length 2048, "
        f"but got an array with length {length} instead."
    )
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": "array_above_max_length"}
    }


def conversation(count: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": unique("hi")}] + [{"role": "user", "content": "hi"}] * (count - 1)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_chat_of_2049_messages_is_openais_400_and_2048_is_served(chain: Chain, stream: bool) -> None:
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=30) as http:
        body = {"model": "strong-model", "stream": stream, "max_tokens": 8}
        refused = await http.post("/chat/completions", json={**body, "messages": conversation(2049)})
        assert (refused.status_code, refused.json()) == (400, too_long("messages", 2049))
        served = await http.post("/chat/completions", json={**body, "messages": conversation(2048)})
        assert served.status_code == 200, served.text


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_responses_input_of_2049_items_is_openais_400_and_2048_is_served(chain: Chain, stream: bool) -> None:
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=30) as http:
        body = {"model": "strong-model", "stream": stream, "max_output_tokens": 16}
        refused = await http.post("/responses", json={**body, "input": conversation(2049)})
        assert (refused.status_code, refused.json()) == (400, too_long("input", 2049))
        # Its instructions are one more message for the router: 2049 in all.
        served = await http.post("/responses", json={**body, "input": conversation(2048), "instructions": "Be brief."})
        assert served.status_code == 200, served.text


async def test_a_grpc_callers_messages_past_the_bound_are_invalid_argument(chain: Chain) -> None:
    def request(count: int) -> router_pb2.CompleteRequest:
        messages = [common_pb2.ChatMessage(role="user", content=m["content"]) for m in conversation(count)]
        return router_pb2.CompleteRequest(messages=messages, model="strong-model", max_tokens=8)

    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await router.Complete(request(MAX_ROUTED_MESSAGES + 1), timeout=10)
        assert (await router.Complete(request(MAX_ROUTED_MESSAGES), timeout=30)).content
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = ServiceError.from_rpc_error(caught.value)
    assert (error.reason, error.metadata) == ("INVALID_REQUEST", {"field": "messages"})
    assert error.message == f"messages must be at most {MAX_ROUTED_MESSAGES}, got {MAX_ROUTED_MESSAGES + 1}"


async def test_a_messages_50000_content_parts_are_a_400_naming_it_and_2048_are_served(chain: Chain) -> None:
    """A message of 200,000 empty text parts (6 MB) held the edge's event loop over a second while they were
    validated; past MAX_CONTENT_PARTS it is refused from their count. (So many are now refused before the parse, past
    the bound on a body's objects and arrays, MAX_JSON_CONTAINERS: 50,000 are within it.)"""
    part = {"type": "text", "text": ""}
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=30) as http:
        body = {"model": "strong-model", "max_tokens": 8}
        many = {**body, "messages": [{"role": "user", "content": [part] * 50_000}]}
        refused = await http.post("/chat/completions", json=many)
        message = (
            "Invalid 'messages[0].content': array too long. Expected an array with maximum length "
            f"{MAX_CONTENT_PARTS}, but got an array with length 50000 instead."
        )
        error = {"message": message, "type": "invalid_request_error", "param": "messages[0].content"}
        assert (refused.status_code, refused.json()) == (400, {"error": {**error, "code": "array_above_max_length"}})
        parts = [{"type": "text", "text": unique("hi")}] + [part] * (MAX_CONTENT_PARTS - 1)
        served = await http.post("/chat/completions", json={**body, "messages": [{"role": "user", "content": parts}]})
        assert served.status_code == 200, served.text
        items = [{"role": "user", "content": [{"type": "input_text", "text": ""}] * 50_000}]
        refused = await http.post("/responses", json={"model": "strong-model", "input": items})
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, "input[0].content")
