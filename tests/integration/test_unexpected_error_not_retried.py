"""An unexpected error on a completion route (chat completions, completions, responses) is a 500 that says
x-should-retry: false, in OpenAI's error body with no internal detail. The request was admitted and may have been
generated and charged before the edge failed: OpenAI's Python SDK retries a 500 twice on its own, and each retry was a
new request, generated and charged again, while the caller got no answer. The official SDK against the real chain;
the edge fails (a bug stood in for by a function that raises) after the router answered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml

from services.edge import app
from services.edge.settings import EdgeSettings
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port, model, provider, served_edge, served_stack


@dataclass
class Stack:
    base_url: str
    upstream: FakeOpenAI


@pytest.fixture
async def stack(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """One model, no classifier (the requests name it), no response cache (a retry would be served from it at no
    cost, hiding the second generation)."""
    monkeypatch.setenv("ONE_KEY", "sk-one")
    with FakeOpenAI() as upstream:
        registry = {
            "tiers": ["economy"],
            "providers": {"one": provider("openai", upstream.base_url, "ONE_KEY")},
            "models": [model("one-model", "one", "economy", ("1.00", "2.00"))],
        }
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry))
        async with served_stack(path, redis_url, None, verifier=False, cache_ttl_s=0) as servers:
            settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{servers['router'].port}")
            async with served_edge(settings) as base_url:
                yield Stack(base_url, upstream)


def broken(*args: object) -> dict:
    raise RuntimeError("a bug with an internal detail: 10.1.2.3:50053")


@pytest.mark.parametrize("route", ["chat", "completions", "responses"])
async def test_an_unexpected_error_on_a_completion_route_is_not_retried(
    stack: Stack, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "completion_body", broken)  # fails once the router has answered (and charged)
    sdk = openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-test")  # max_retries=2, as callers have it
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            if route == "chat":
                await sdk.chat.completions.create(model="one-model", messages=[{"role": "user", "content": "hi"}])
            elif route == "completions":
                await sdk.completions.create(model="one-model", prompt="hi")
            else:
                await sdk.responses.create(model="one-model", input="hi")
    finally:
        await sdk.close()
    response = failed.value.response
    assert (response.status_code, response.headers.get("x-should-retry")) == (500, "false")
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "internal_error", None)
    assert "10.1.2.3" not in response.text and "bug" not in response.text
    assert len(stack.upstream.requests) == 1  # generated once: the SDK sent it no more


async def test_an_unexpected_error_elsewhere_is_still_retried(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A route that charges nothing (GET /v1/models) keeps the SDK's own retries: sending it again costs nothing."""
    monkeypatch.setattr(app, "models_body", broken)
    sdk = openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-test", max_retries=0)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            await sdk.models.list()
    finally:
        await sdk.close()
    assert "x-should-retry" not in failed.value.response.headers
