"""An x-router-* header the edge does not know is a 400 naming it and listing those it knows, on every route that reads
them: ignored, a misspelt cap (`x-router-max-cost-usdd`) left the request uncapped while its caller believed it capped.
The real edge over loopback before a stand-in router that records what it is asked; httpx and the official SDK as
callers."""

from __future__ import annotations

import httpx
import openai
import pytest

from services.edge.router_headers import FIELDS
from tests.edge.conftest import Edge

USER = {"role": "user", "content": "hello"}
BODIES = {
    "/chat/completions": {"model": "auto", "messages": [USER]},
    "/completions": {"model": "auto", "prompt": "hello"},
    "/responses": {"model": "auto", "input": "hello"},
    "/router/decide": {"model": "auto", "messages": [USER]},
}
KNOWN = (
    "x-router-buffer-stream, x-router-escalation, x-router-max-cost-usd, x-router-max-latency-ms, "
    "x-router-quality-kept, x-router-quality-target, x-router-session-id, x-router-strong-share, "
    "x-router-verifier-threshold"
)
# A value of each header the edge and the router take.
VALID = {
    "x-router-quality-target": "0.5",
    "x-router-max-latency-ms": "5000",
    "x-router-max-cost-usd": "0.01",
    "x-router-session-id": "s-1",
    "x-router-escalation": "off",
    "x-router-buffer-stream": "false",
    "x-router-verifier-threshold": "0.7",
}


@pytest.mark.parametrize("route", sorted(BODIES))
@pytest.mark.parametrize(
    "header", ["x-router-max-cost-usdd", "x-router-max-cost", "X-Router-Tenant", "x-router-", "x_router_max_cost_usd"]
)
async def test_an_unknown_router_header_is_a_400_naming_it(edge: Edge, route: str, header: str) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await http.post(route, json=BODIES[route], headers={header: "0.001"})
    assert reply.status_code == 400, reply.text
    name = header.lower()  # as HTTP has it: a header's name is not case-sensitive
    assert reply.json() == {
        "error": {
            "message": f"unknown header {name}: the x-router-* headers are {KNOWN}",
            "type": "invalid_request_error",
            "param": name,
            "code": "unknown_parameter",
        }
    }
    assert edge.router.asked == []  # refused before anything was routed


async def test_the_sdk_sending_a_misspelt_cap_gets_a_bad_request_naming_it(edge: Edge) -> None:
    client = openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hello"}], extra_headers={"X-Router-Max-Cost": "0.01"}
        )
    await client.close()
    assert (refused.value.param, refused.value.code) == ("x-router-max-cost", "unknown_parameter")
    assert edge.router.asked == []


async def test_every_known_router_header_is_served(edge: Edge) -> None:
    """With the header the edge knows for each routing limit (one quality aim of three: the router takes one)."""
    assert set(VALID) | {"x-router-strong-share", "x-router-quality-kept"} == set(FIELDS)
    client = openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0)
    answer = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], extra_headers=VALID
    )
    await client.close()
    assert answer.choices[0].message.content == "hi"
    [asked] = edge.router.asked
    limits = (asked.quality_target, asked.max_latency_ms, asked.max_cost_usd, asked.session_id)
    assert limits == (0.5, 5000, "0.01", "s-1")
    assert (asked.escalation, asked.buffer_stream, round(asked.verifier_threshold, 6)) == ("off", False, 0.7)
