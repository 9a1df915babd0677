"""GET /v1/router/stats's `since` and `until` are Unix seconds as JSON writes a number, or a UTC date: anything else is
a 400 naming the parameter, and so is a query parameter it does not take (a misspelt `untill` or `groupby`, ignored,
answered the stats of another window or shape). float() took `1_700_000_000`, Arabic-Indic digits and blanks around
the number, and strptime's %Y Unicode digits, each served as a bound its caller did not write. The real edge; its
router out of reach, so a bound it takes is a 503 (the stats were asked for) and one it refuses a 400 before any
call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.edge.keys import key_line
from tests.edge.conftest import keyed_edge_without_router

KEY = "sk-stats-reader"
NOT_AS_WRITTEN = [
    "1_700_000_000",
    "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",  # 1700000000 in Arabic-Indic digits
    " 1700000000",
    "1700000000\t",
    "\u0662\u0660\u0662\u0666-12-05",  # a date whose year is in Arabic-Indic digits
    "1e11",  # a number, but no Unix second of a ledger (the year 5138)
    "-1",
]
TAKEN = ["1700000000", "1.7e9", "1700000000.5", "2026-12-05", "2026-12-05T00:00:00Z"]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with keyed_edge_without_router(key_line("reader", KEY), KEY) as client:
        yield client


@pytest.mark.parametrize("name", ["since", "until"])
async def test_a_bound_not_written_as_a_number_or_date_is_a_400_naming_it(http: httpx.AsyncClient, name: str) -> None:
    found = {}
    for text in NOT_AS_WRITTEN:
        reply = await http.get("/router/stats", params={name: text})
        found[text] = (reply.status_code, reply.json()["error"]["param"], reply.json()["error"]["code"])
    assert found == dict.fromkeys(NOT_AS_WRITTEN, (400, name, "invalid_value"))


async def test_a_group_by_stats_do_not_know_is_an_invalid_value(http: httpx.AsyncClient) -> None:
    reply = await http.get("/router/stats", params={"group_by": "key"})
    error = reply.json()["error"]
    assert (reply.status_code, error["param"], error["code"]) == (400, "group_by", "invalid_value"), error


async def test_a_bound_written_as_a_number_or_date_is_asked_of_the_router(http: httpx.AsyncClient) -> None:
    statuses = {text: (await http.get("/router/stats", params={"since": text})).status_code for text in TAKEN}
    assert statuses == dict.fromkeys(TAKEN, 503)


@pytest.mark.parametrize("params", [{"untill": "1700000000"}, {"groupby": "model"}, {"since": "0", "tenant": "acme"}])
async def test_a_query_parameter_stats_do_not_take_is_a_400_naming_it(
    http: httpx.AsyncClient, params: dict[str, str]
) -> None:
    named = next(name for name in params if name not in ("since", "until", "group_by"))
    reply = await http.get("/router/stats", params=params)
    error = reply.json()["error"]
    assert (reply.status_code, error["param"], error["code"]) == (400, named, "unknown_parameter"), error


async def test_a_long_unknown_parameter_is_named_by_its_first_64_characters(http: httpx.AsyncClient) -> None:
    """A caller's name is quoted, not echoed whole: a 400 is no amplifier of what its caller sent."""
    reply = await http.get("/router/stats", params={"x" * 2_000: "1"})
    error = reply.json()["error"]
    assert (reply.status_code, error["type"], error["param"]) == (400, "invalid_request_error", "x" * 64), error
    assert len(error["message"]) < 200, error["message"]
