"""What a caller chose and a 404 quotes back is cut: a model id or a path of tens of kilobytes (as long as the request
head allows) was echoed whole in the error's message. The real edge over loopback before a stand-in router whose
registry has no model; httpx and the official SDK as callers."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.edge.conftest import Edge

LONG = "m" * 60_000  # within the edge's 64 KiB request head


async def test_an_unknown_model_id_is_quoted_in_part(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await http.get(f"/models/{LONG}")
    assert reply.status_code == 404
    assert reply.json()["error"] == {
        "message": f"model {LONG[:128]!r} does not exist",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


async def test_the_sdk_retrieving_an_unknown_model_of_a_long_id_gets_a_short_not_found(edge: Edge) -> None:
    client = openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as refused:
        await client.models.retrieve(LONG)
    await client.close()
    assert refused.value.code == "model_not_found" and len(refused.value.message) < 300


async def test_a_path_no_route_has_is_quoted_in_part(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await http.get(f"/{LONG}")
    assert reply.status_code == 404
    path = f"/v1/{LONG}"[:256]
    assert reply.json()["error"]["message"] == f"no route GET {path}"
