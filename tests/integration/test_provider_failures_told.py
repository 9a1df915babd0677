"""A provider's failure through the whole chain, its error body quoting what no caller may read: the edge's HTTP caller
gets OpenAI's error body with the status of the failure's class (429 rate limited, 503 overloaded, 400 refused as
invalid, 502 credentials refused), and a direct gRPC caller of the router the failure's code and reason with fixed
words for its kind; neither the provider's text. Real edge, router, providers and classifier on loopback; the fake
OpenAI-compatible upstream answers the errors."""

from __future__ import annotations

import uuid

import grpc
import httpx
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.fakes import Fault
from tests.integration.conftest import Chain

SECRET = "org-Zq81Secret via http://10.0.3.7:8000 in /srv/llm/app.py"
# upstream status -> (faults for every attempt, HTTP status, OpenAI type and code, the gRPC reason, the words told)
CASES = {
    429: (2, 429, ("requests", "rate_limit_exceeded"), "UPSTREAM_RATE_LIMITED", "is rate limiting requests"),
    529: (2, 503, ("server_error", "upstream_unavailable"), "UPSTREAM_UNAVAILABLE", "is overloaded"),
    400: (1, 400, ("invalid_request_error", "upstream_error"), "UPSTREAM_ERROR", "refused the request as invalid"),
    401: (1, 502, ("server_error", "upstream_error"), "UPSTREAM_ERROR", "refused this service's credentials"),
}


def ask() -> dict:
    """Named model, so no fallback: the upstream's error is the request's."""
    return {"model": "cheap-model", "messages": [{"role": "user", "content": f"hello {uuid.uuid4().hex}"}]}


@pytest.mark.parametrize("upstream", sorted(CASES))
async def test_the_edges_caller_gets_the_status_of_the_failures_class(chain: Chain, upstream: int) -> None:
    attempts, status, (kind, code), _, _ = CASES[upstream]
    chain.budget.enqueue(*[Fault.error(upstream, message=SECRET)] * attempts)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.post(f"{chain.base_url}/chat/completions", json=ask())
    finally:
        chain.budget.faults.clear()
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == (kind, code) and "request id" in error["message"]
    assert SECRET not in reply.text and "10.0.3.7" not in reply.text


@pytest.mark.parametrize("upstream", sorted(CASES))
async def test_a_direct_grpc_caller_gets_the_kind_in_fixed_words(chain: Chain, upstream: int) -> None:
    attempts, _, _, reason, words = CASES[upstream]
    chain.budget.enqueue(*[Fault.error(upstream, message=SECRET)] * attempts)
    request = router_pb2.CompleteRequest(
        model="cheap-model", messages=[common_pb2.ChatMessage(role="user", content=f"hi {uuid.uuid4().hex}")]
    )
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await router_pb2_grpc.RouterStub(channel).Complete(request, timeout=30)
    finally:
        chain.budget.faults.clear()
    error = ServiceError.from_rpc_error(failed.value)
    assert error.reason == reason and error.metadata["upstream_status"] == str(upstream)
    assert error.message == f"budgetai/cheap-model: the provider {words} (HTTP {upstream})"
    assert SECRET not in str(failed.value.trailing_metadata())
