"""An end-user id (user, safety_identifier, prompt_cache_key) longer than OpenAI takes is OpenAI's 400, in its words
and with its code, naming the field: of any length, it was accepted, hashed and sent on (services/router/end_users.py).
At its bound it is served. On every route that takes them (the legacy route takes user alone, as OpenAI's); the real
edge over loopback before a stand-in router that records what it is asked."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from llmrouter.passthrough import END_USER_ID_CHARS
from tests.edge.conftest import Edge

USER = {"role": "user", "content": "hello"}
BODIES: dict[str, dict[str, Any]] = {
    "/chat/completions": {"model": "auto", "messages": [USER]},
    "/completions": {"model": "auto", "prompt": "hello"},
    "/responses": {"model": "auto", "input": "hello"},
}


def test_the_bounds_are_openais() -> None:
    assert END_USER_ID_CHARS == {"user": 512, "safety_identifier": 64, "prompt_cache_key": 64}


@pytest.mark.parametrize(
    ("route", "field"),
    [("/completions", "user")]
    + [(route, field) for route in ("/chat/completions", "/responses") for field in sorted(END_USER_ID_CHARS)],
)
async def test_an_end_user_id_past_its_bound_is_a_400_naming_it(edge: Edge, route: str, field: str) -> None:
    bound = END_USER_ID_CHARS[field]
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        over = await http.post(route, json={**BODIES[route], field: "é" * (bound + 1)})  # characters, not bytes
        huge = await http.post(route, json={**BODIES[route], field: "u" * 100_000})
        assert edge.router.asked == []  # refused before anything was routed
        at = await http.post(route, json={**BODIES[route], field: "é" * bound})
    message = (
        f"Invalid '{field}': string too long. Expected a string with maximum length {bound}, but got a string with "
        f"length {bound + 1} instead."
    )
    error = {"message": message, "type": "invalid_request_error", "param": field, "code": "string_above_max_length"}
    assert (over.status_code, over.json()) == (400, {"error": error})
    assert (huge.status_code, huge.json()["error"]["param"]) == (400, field)
    assert at.status_code == 200, at.text
    [asked] = edge.router.asked
    assert field in json.loads(asked.passthrough_json)
