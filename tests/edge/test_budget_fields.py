"""PUT /v1/router/budgets/{scope}/{name} takes limit_usd alone: any other field is a 400 naming it, before the router is
asked. Ignored, a misspelt limit (`limt_usd` beside an old `limit_usd`) or a field hoped to set something (a `period`)
was answered 200, the budget set otherwise than its admin believed. The real edge; its router out of reach, so a body
it takes is a 503 (the router was asked) and one it refuses a 400 before any call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.edge.keys import key_line
from tests.edge.conftest import keyed_edge_without_router

ADMIN_KEY = "sk-budget-admin"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with keyed_edge_without_router(key_line("ops", ADMIN_KEY) + " admin", ADMIN_KEY) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"limit_usd": "5", "period": "month"}, "period"),
        ({"limit_usd": "5", "limt_usd": "0.5"}, "limt_usd"),
        ({"limit_usd": "5", "tenant": "acme", "alert": "80%"}, "alert"),  # the first in order of names
    ],
)
async def test_a_field_beside_limit_usd_is_a_400_naming_it(
    http: httpx.AsyncClient, body: dict[str, str], named: str
) -> None:
    reply = await http.put("/router/budgets/tenant/acme", json=body)
    error = reply.json()["error"]
    assert (reply.status_code, error["param"], error["code"]) == (400, named, "unknown_parameter"), error


async def test_limit_usd_alone_is_asked_of_the_router(http: httpx.AsyncClient) -> None:
    reply = await http.put("/router/budgets/tenant/acme", json={"limit_usd": "5"})
    assert reply.status_code == 503


async def test_a_long_unknown_field_is_named_by_its_first_64_characters(http: httpx.AsyncClient) -> None:
    """A caller's name is quoted, not echoed whole: a 400 is no amplifier of what its caller sent."""
    reply = await http.put("/router/budgets/tenant/acme", json={"limit_usd": "5", "y" * 100_000: "1"})
    error = reply.json()["error"]
    assert (reply.status_code, error["type"], error["param"]) == (400, "invalid_request_error", "y" * 64), error
    assert len(error["message"]) < 200, error["message"]


@pytest.mark.parametrize("body", [{"limit_usd": 5}, {"limit_usd": ""}, {"limit_usd": None}, {}, [], "5"])
async def test_a_limit_that_is_no_decimal_string_is_an_invalid_value(http: httpx.AsyncClient, body: object) -> None:
    """As a limit the router refuses ("limit_usd must be between 0 and 9000000") is: a caller branching on the code
    met null for some bad limits and invalid_value for others."""
    reply = await http.put("/router/budgets/tenant/acme", json=body)
    error = reply.json()["error"]
    assert (reply.status_code, error["param"], error["code"]) == (400, "limit_usd", "invalid_value"), error
