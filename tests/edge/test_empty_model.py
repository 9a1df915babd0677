"""An explicit empty `model` is OpenAI's 400 naming `model`, on every route that takes one (chat completions, legacy
completions, Responses, decide): it was routed as if left out, which the README promises only for a missing model
or "auto". Left out or "auto", the router still chooses (the gRPC API's "", proto3's default, meaning the same). The
real edge over loopback before a stand-in router that records what it is asked."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.edge.conftest import Edge

USER = {"role": "user", "content": "hello"}
BODIES: dict[str, dict[str, Any]] = {
    "/chat/completions": {"messages": [USER]},
    "/completions": {"prompt": "hello"},
    "/responses": {"input": "hello"},
    "/router/decide": {"messages": [USER]},
}


@pytest.mark.parametrize("route", sorted(BODIES))
async def test_an_empty_model_is_a_400_naming_it(edge: Edge, route: str) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await http.post(route, json={**BODIES[route], "model": ""})
    error = reply.json()["error"]
    assert reply.status_code == 400, reply.text
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "model", "invalid_value")
    assert "auto" in error["message"], error["message"]  # says how to have the router choose
    assert edge.router.asked == []


@pytest.mark.parametrize("route", sorted(BODIES))
@pytest.mark.parametrize("model", ["auto", None], ids=["auto", "left-out"])
async def test_auto_or_no_model_is_routed(edge: Edge, route: str, model: str | None) -> None:
    body = BODIES[route] if model is None else {**BODIES[route], "model": model}
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await http.post(route, json=body)
    assert reply.status_code == 200, reply.text
    [asked] = edge.router.asked
    assert asked.model == ""
