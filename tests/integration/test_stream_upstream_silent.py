"""A stream whose upstream never sends its first byte is answered by the edge's deadline (EDGE_REQUEST_TIMEOUT_S):
its headers wait for the decision and the first delta (first_chunks), so nothing else bounds the caller's wait for
them. A 504 naming the provider's timeout, on the chat route and on the Responses route that retells it, never a
caller left waiting on an open connection."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from services.edge.settings import EdgeSettings
from tests.integration.conftest import Chain, free_port, served_edge
from tests.integration.test_chain import unique

EDGE_TIMEOUT_S = 2.0
CALLER_WAITS_S = 15.0  # far past the edge's deadline: a caller still waiting then was left hanging


@pytest.fixture
def silent_budget(chain: Chain) -> Iterator[Chain]:
    chain.budget.holding_answers = True  # the cheap upstream takes each call and answers none
    try:
        yield chain
    finally:
        chain.budget.holding_answers = False


@pytest.mark.parametrize("route", ["chat/completions", "responses"])
async def test_a_stream_whose_upstream_never_answers_is_a_504_by_the_edges_deadline(
    silent_budget: Chain, route: str
) -> None:
    chain = silent_budget
    settings = EdgeSettings(port=free_port(), router_addr=chain.router_addr, request_timeout_s=EDGE_TIMEOUT_S)
    prompt = unique("Say hi.")
    body = {"model": "cheap-model", "stream": True}
    body |= {"input": prompt} if route == "responses" else {"messages": [{"role": "user", "content": prompt}]}
    sent = len(chain.budget.requests)
    async with served_edge(settings) as base_url, httpx.AsyncClient(timeout=CALLER_WAITS_S) as http:
        reply = await http.post(f"{base_url}/{route}", json=body)
    assert len(chain.budget.requests) > sent  # it reached the upstream, which held it
    assert reply.status_code == 504
    assert reply.json()["error"]["code"] == "upstream_timeout"
