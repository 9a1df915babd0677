"""The x-router-* headers set the routing limits a client cannot send as body fields: a value refused, by the edge or
by the router, names the header the caller sent in the error's param. The real chain: edge, router over Redis,
classifier and providers, the fake upstreams counting calls."""

from __future__ import annotations

import httpx
import pytest

from services.edge import router_headers
from services.router.admission import MAX_ID_CHARS
from tests.integration.conftest import Chain

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


def upstream_calls(chain: Chain) -> int:
    return len(chain.budget.requests) + len(chain.premium.requests)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-router-max-latency-ms", "99999999999999999999"),  # past int64
        ("x-router-max-latency-ms", "99999999999"),  # past the body field's bound
        ("x-router-max-latency-ms", "0"),
        ("x-router-max-latency-ms", "soon"),
        ("x-router-quality-target", "high"),
        ("x-router-quality-target", "2"),  # the router's refusal
        ("x-router-strong-share", "nan"),
        ("x-router-quality-kept", "-0.5"),
        ("x-router-verifier-threshold", "1.5"),
        ("x-router-max-cost-usd", "-1"),
        ("x-router-max-cost-usd", "lots"),
        ("x-router-session-id", "s" * (MAX_ID_CHARS + 1)),
        ("x-router-session-id", ""),  # would clear the body's session id
        ("x-router-escalation", "sometimes"),
        ("x-router-buffer-stream", "yes"),
    ],
)
@pytest.mark.parametrize("path", ["/chat/completions", "/router/decide"])
async def test_a_header_value_refused_is_named_in_param(chain: Chain, path: str, header: str, value: str) -> None:
    before = upstream_calls(chain)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}{path}", json=BODY, headers={header: value})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    # OpenAI's code for a bad value, whether the edge refused it or the router did (its INVALID_REQUEST).
    assert (error["param"], error["type"], error["code"]) == (header, "invalid_request_error", "invalid_value"), error
    assert error["message"].startswith(header), error
    assert upstream_calls(chain) == before


@pytest.mark.parametrize(
    ("field", "value"), [("quality_target", 2), ("verifier_threshold", 1.5), ("max_cost_usd", "-1")]
)
async def test_a_value_refused_as_its_body_field_or_its_header_has_one_code(
    chain: Chain, field: str, value: object
) -> None:
    """The edge refuses the body field's value, the router the header's (the edge checks only its text): each is
    OpenAI's invalid_value. The router's refusal was told as invalid_request, and the edge's of a negative cap had no
    code at all, so a caller branching on the code missed one of the two."""
    header = next(name for name, named in router_headers.FIELDS.items() if named == field)
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=30) as http:
        by_body = await http.post("/chat/completions", json={**BODY, field: value})
        by_header = await http.post("/chat/completions", json=BODY, headers={header: str(value)})
    refused = [
        (reply.status_code, reply.json()["error"]["param"], reply.json()["error"]["code"])
        for reply in (by_body, by_header)
    ]
    assert refused == [(400, field, "invalid_value"), (400, header, "invalid_value")]


@pytest.mark.parametrize(
    ("header", "first", "second"),
    [
        ("x-router-max-latency-ms", "1000", "60000"),
        ("x-router-quality-target", "0.2", "0.9"),
        ("x-router-max-cost-usd", "0.01", "5"),
        ("x-router-session-id", "a", "b"),
        ("x-router-escalation", "off", "strict"),
        ("x-router-buffer-stream", "true", "true"),
    ],
)
@pytest.mark.parametrize("path", ["/chat/completions", "/router/decide"])
async def test_a_header_given_twice_is_a_400_naming_it(
    chain: Chain, path: str, header: str, first: str, second: str
) -> None:
    """Served with one copy, silently: which one is ambiguous, and a proxy in front may have checked the other."""
    before = upstream_calls(chain)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}{path}", json=BODY, headers=[(header, first), (header, second)])
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == (header, "duplicate_header"), error
    assert upstream_calls(chain) == before


async def test_an_empty_cost_header_never_lifts_the_bodys_cap(chain: Chain) -> None:
    """The router reads an empty max_cost_usd as no cap: given as the header, which overrides the body's, it served the
    request past the cap the body set (an empty body field is a 400)."""
    before = upstream_calls(chain)
    body = {**BODY, "max_cost_usd": "0.000000001"}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=body, headers={"x-router-max-cost-usd": ""})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == ("x-router-max-cost-usd", "invalid_value"), error
    assert upstream_calls(chain) == before


@pytest.mark.parametrize("header", sorted(router_headers.FIELDS))
async def test_every_empty_router_header_is_a_400_naming_it(chain: Chain, header: str) -> None:
    """An empty header overrides its body field with nothing; none is read as left out, or as clearing the body's."""
    before = upstream_calls(chain)
    body = {**BODY, "session_id": "conversation-1"}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=body, headers={header: ""})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == (header, "invalid_value"), error
    assert upstream_calls(chain) == before
