"""A cap no model is within, given as an x-router-* header, is named as the header in the refusal, its param and its
message alike: the caller sent the header, and may never have heard of the body field. The real edge over the real
router (no classifier: the caps rule every model out before any routing), the upstreams fakes never called."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import model, provider, quiet_edge_settings, served_edge, served_stack

USER = {"role": "user", "content": "hi"}
# cheap-model: a 2,000 ms SLO, ~0.0000144 USD for "hi" and a short answer; strong-model: 10,000 ms, ~0.00018 USD.
BETWEEN_THE_COSTS = "0.0001"


@dataclass
class Stack:
    base_url: str
    upstreams: tuple[FakeOpenAI, FakeOpenAI]

    def calls(self) -> int:
        return sum(len(upstream.requests) for upstream in self.upstreams)


@pytest.fixture
async def stack(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("CHEAP_KEY", "sk-cheap")
    monkeypatch.setenv("STRONG_KEY", "sk-strong")
    with FakeOpenAI() as cheap, FakeOpenAI() as strong:
        registry = {
            "tiers": ["economy", "premium"],
            "providers": {
                "cheap": provider("openai", cheap.base_url, "CHEAP_KEY"),
                "strong": provider("openai", strong.base_url, "STRONG_KEY"),
            },
            "models": [
                model("cheap-model", "cheap", "economy", ("0.60", "0.60"), latency_slo_ms=2000),
                model("strong-model", "strong", "premium", ("2.50", "10.00"), latency_slo_ms=10000),
            ],
        }
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry))
        async with served_stack(path, redis_url, None, verifier=False) as servers:
            settings = quiet_edge_settings(f"127.0.0.1:{servers['router'].port}")
            async with served_edge(settings) as base_url:
                yield Stack(base_url, (cheap, strong))


async def refused(stack: Stack, route: str, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "auto", "messages": [USER], **fields}
    if route == "stream":
        body["stream"] = True
    elif route == "responses":
        body = {"model": "auto", "input": "hi", **fields}
    path = {"chat": "/chat/completions", "stream": "/chat/completions", "decide": "/router/decide"}.get(
        route, "/responses"
    )
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        reply = await http.post(path, json=body, headers=headers)
    assert (reply.status_code, reply.headers["content-type"]) == (400, "application/json"), reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert error["code"] == "no_eligible_model", error
    return error


ROUTES = ["chat", "stream", "decide", "responses"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("header", "value", "field"),
    [("x-router-max-latency-ms", "1", "max_latency_ms"), ("x-router-max-cost-usd", "0.000000001", "max_cost_usd")],
)
async def test_a_header_cap_no_model_is_within_is_named_as_the_header(
    stack: Stack, route: str, header: str, value: str, field: str
) -> None:
    error = await refused(stack, route, {header: value})
    assert error["param"] == header, error
    assert f"over {header} " in error["message"] and field not in error["message"], error
    assert stack.calls() == 0


@pytest.mark.parametrize("route", ROUTES)
async def test_a_header_cap_beside_a_body_cap_each_is_named_as_sent(stack: Stack, route: str) -> None:
    """The strong model over the body's cost cap, the cheap one over the header's latency cap: no one field to name
    (param null), and the message names each cap as its caller sent it."""
    error = await refused(stack, route, {"x-router-max-latency-ms": "1000"}, max_cost_usd=BETWEEN_THE_COSTS)
    assert error["param"] is None, error
    message = error["message"]
    assert "strong-model:" in message and f"over max_cost_usd {BETWEEN_THE_COSTS}" in message, error
    assert "cheap-model: latency SLO 2000 ms over x-router-max-latency-ms 1000" in message, error
    assert "max_latency_ms" not in message, error


async def test_the_body_fields_cap_is_named_as_the_body_field(stack: Stack) -> None:
    error = await refused(stack, "chat", {}, max_latency_ms=1)
    assert error["param"] == "max_latency_ms" and "over max_latency_ms 1" in error["message"], error


async def test_the_sdk_sees_the_header_it_sent(stack: Stack) -> None:
    sdk = openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-none", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-router-max-latency-ms": "1"},
            )
    finally:
        await sdk.close()
    assert caught.value.param == "x-router-max-latency-ms"
