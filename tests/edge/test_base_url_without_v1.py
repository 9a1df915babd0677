"""An SDK given the edge's address without /v1 (`base_url="http://127.0.0.1:8080"`) gets a 404 that says where the
API is, not only that `POST /chat/completions` is no route. The real edge over loopback; the official SDK as caller."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.edge.conftest import Edge

HINT = ": the API is under /v1 (an SDK's base URL ends in /v1)"


async def test_a_route_called_without_v1_is_told_where_the_api_is(edge: Edge) -> None:
    root = edge.base_url.removesuffix("/v1")
    client = openai.AsyncOpenAI(base_url=root, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as refused:
        await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    await client.close()
    assert refused.value.body == {
        "message": f"no route POST /chat/completions{HINT}",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


async def test_a_path_that_is_no_route_under_v1_either_is_not_given_the_hint(edge: Edge) -> None:
    root = edge.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, timeout=10) as http:
        assert (await http.get("/nothing")).json()["error"]["message"] == "no route GET /nothing"
        assert (await http.get("/v1/nothing")).json()["error"]["message"] == "no route GET /v1/nothing"
