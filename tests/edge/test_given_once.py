"""A query parameter or form field a route reads, given more than once, is a 400 naming it: Starlette kept the last
copy (`?limit=1&limit=100` listed 100) while a proxy or log in front may read the first, so which one counts was
ambiguous, as with a repeated header. None of them is a list by design. The real edge, its batch store in process;
the router is not needed (the stats route refuses before calling it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.edge.keys import key_line
from tests.edge.conftest import keyed_edge_without_router

KEY = "sk-lister"
REPEATED = [
    ("/files", "limit", ["1", "100"]),
    ("/files", "order", ["asc", "desc"]),
    ("/files", "after", ["file-a", "file-b"]),
    ("/files", "purpose", ["batch", "batch_output"]),
    ("/batches", "limit", ["1", "1"]),  # the same value twice is refused too: no copy is preferred
    ("/batches", "after", ["batch_a", "batch_b"]),
    ("/router/stats", "group_by", ["model", "tenant"]),
    ("/router/stats", "since", ["2026-01-01", "0"]),
    ("/router/stats", "until", ["1", "2"]),
]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with keyed_edge_without_router(key_line("lister", KEY), KEY) as client:
        yield client


async def test_a_repeated_query_parameter_is_a_400_naming_it(http: httpx.AsyncClient) -> None:
    found = {}
    for route, name, values in REPEATED:
        reply = await http.get(route, params=[(name, value) for value in values])
        error = reply.json()["error"]
        found[(route, name)] = (reply.status_code, error["param"], error["code"], error["type"])
    assert found == {
        (route, name): (400, name, "duplicate_parameter", "invalid_request_error") for route, name, _ in REPEATED
    }


async def test_a_name_spelt_encoded_is_the_same_parameter(http: httpx.AsyncClient) -> None:
    reply = await http.get("/files?lim%69t=1&limit=100")
    assert (reply.status_code, reply.json()["error"]["param"]) == (400, "limit")


async def test_each_parameter_given_once_is_served(http: httpx.AsyncClient) -> None:
    files = await http.get("/files", params={"limit": "5", "order": "asc", "purpose": "batch"})
    batches = await http.get("/batches", params={"limit": "5"})
    assert [(reply.status_code, reply.json()["data"]) for reply in (files, batches)] == [(200, [])] * 2


@pytest.mark.parametrize("purposes", [["batch", "batch"], ["fine-tune", "batch"]])
async def test_a_repeated_form_field_is_a_400_naming_it(http: httpx.AsyncClient, purposes: list[str]) -> None:
    """A file uploaded with purpose twice was stored by the last copy's word."""
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}\n'
    reply = await http.post("/files", files={"file": ("b.jsonl", line)}, data={"purpose": purposes})
    error = reply.json()["error"]
    assert (reply.status_code, error["param"], error["code"]) == (400, "purpose", "duplicate_parameter"), error
    assert error["message"].startswith("form field 'purpose' given 2 times")
    assert (await http.get("/files")).json()["data"] == []
