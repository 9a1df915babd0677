"""The Files and Batches listings' `limit` is ASCII digits: a query string may carry any Unicode character, and
str.isdigit() holds for superscripts ('²') that int() refuses, so `?limit=²` crashed the listing into a 500 (and the
edge's connection with it) where any other bad limit is OpenAI's 400 naming `limit`."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import free_port, served_edge

KEY = "sk-lister"
NO_ASCII_INTEGERS = ["²", "\u0661", "1.0", "-1", " 2"]  # \u0661: an Arabic-Indic one
# Past the 4,300 digits int() reads: a ValueError (a 500) unless refused first.
TOO_LONG = ["9" * 5000, "0" * 5000 + "1"]


async def test_a_limit_that_is_no_ascii_integer_is_a_400_naming_it() -> None:
    settings = EdgeSettings(
        port=free_port(),
        router_addr="127.0.0.1:1",  # listings read the batch store only (in process here)
        access_log="off",
        metrics_port=0,
        api_keys=SecretStr(key_line("lister", KEY)),
    )
    headers = {"authorization": f"Bearer {KEY}"}
    async with served_edge(settings) as base, httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        refused = {
            (route, limit): await http.get(route, params={"limit": limit})
            for route in ("/files", "/batches")
            for limit in NO_ASCII_INTEGERS + TOO_LONG[:1]
        }
        listed = [await http.get(route, params={"limit": "2"}) for route in ("/files", "/batches")]
        padded = [await http.get(route, params={"limit": TOO_LONG[1]}) for route in ("/files", "/batches")]
    found = {asked: (reply.status_code, reply.json()["error"]["param"]) for asked, reply in refused.items()}
    assert found == {asked: (400, "limit") for asked in refused}
    assert [(reply.status_code, reply.json()["data"]) for reply in listed + padded] == [(200, [])] * 4
