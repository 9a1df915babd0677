"""A max_cost_usd (body field or x-router-max-cost-usd header) written with more digits than an amount of USD takes is
a 400 naming it: `0.` then 5,000 zeros then a 1, or 1e-100000, was taken, and a digit past the pico-dollar the money
is counted in means nothing while the arithmetic on it grows with its digits and exponent. A cap below a pico-dollar
within the bounds is still a cap (of 0: tests/router/test_amount_bounds.py). The real edge over loopback before a
stand-in router that records what it is asked."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from llmrouter.validation import AMOUNT_FORM
from tests.edge.conftest import Edge

USER = {"role": "user", "content": "hello"}
BODIES: dict[str, dict[str, Any]] = {
    "/chat/completions": {"model": "auto", "messages": [USER]},
    "/completions": {"model": "auto", "prompt": "hello"},
    "/responses": {"model": "auto", "input": "hello"},
}
FINE = "0." + "0" * 5000 + "1"
# As JSON strings and as JSON numbers (their text is the field's: services/edge/openai_api.py cost_as_written).
WRITTEN = {
    "5,000 zeros": FINE,
    "1e-100000": "1e-100000",
    "31 significant digits": "1." + "0" * 30,
    "a digit below 1e-30": "1e-31",
    "a digit above 1e30": "1e31",
    "65 characters": "1e" + "0" * 63,
}


def too_fine(param: str) -> dict[str, object]:
    message = f"{param} has more digits than an amount of USD needs: it must be {AMOUNT_FORM}"
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_value"}}


def as_number(route: str, text: str) -> bytes:
    body = httpx.Request("POST", "/", json=BODIES[route]).content.decode()
    return (body[:-1] + ', "max_cost_usd": ' + text + "}").encode()


@pytest.mark.parametrize("route", sorted(BODIES))
@pytest.mark.parametrize("written", sorted(WRITTEN))
async def test_a_cap_written_past_an_amounts_digits_is_a_400_naming_it(edge: Edge, route: str, written: str) -> None:
    text = WRITTEN[written]
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        as_string = await http.post(route, json={**BODIES[route], "max_cost_usd": text})
        number = await http.post(route, content=as_number(route, text), headers={"content-type": "application/json"})
        header = await http.post(route, json=BODIES[route], headers={"x-router-max-cost-usd": text})
    for reply in (as_string, number):
        assert (reply.status_code, reply.json()) == (400, too_fine("max_cost_usd")), reply.text
    assert (header.status_code, header.json()) == (400, too_fine("x-router-max-cost-usd")), header.text
    assert edge.router.asked == []  # refused before anything was routed


@pytest.mark.parametrize("text", ["0.000000000000000000000000000001", "2.5e-29", "123456789012345678901234567890e-29"])
async def test_a_cap_within_the_bounds_reaches_the_router_as_written(edge: Edge, text: str) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        body = await http.post("/chat/completions", json={**BODIES["/chat/completions"], "max_cost_usd": text})
        header = await http.post(
            "/chat/completions", json=BODIES["/chat/completions"], headers={"x-router-max-cost-usd": text}
        )
    assert (body.status_code, header.status_code) == (200, 200), (body.text, header.text)
    assert [Decimal(a.max_cost_usd) for a in edge.router.asked] == [Decimal(text)] * 2
