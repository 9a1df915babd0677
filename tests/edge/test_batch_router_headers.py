"""An x-router-* header on POST /v1/files or POST /v1/batches, which read none, is a 400 naming it: ignored, a cap
sent with a batch left every request of it uncapped while its caller believed them capped. A header the edge knows is
unsupported_parameter (it names the body field each request may give instead); one it does not is unknown_parameter,
as on the routes that read them (tests/edge/test_unknown_router_header.py). The real edge over loopback; httpx and
the official SDK as callers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from services.batches import wire
from services.edge.router_headers import FIELDS
from tests.edge.conftest import Edge
from tests.edge.test_unknown_router_header import KNOWN

LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": wire.ENDPOINT,
    "body": {"messages": [{"role": "user", "content": "hi"}]},
}
BATCH = {"endpoint": wire.ENDPOINT, "completion_window": "24h"}


async def upload(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> httpx.Response:
    files = {"file": ("batch.jsonl", json.dumps(LINE).encode())}
    return await http.post("/files", files=files, data={"purpose": "batch"}, headers=headers)


async def listed(http: httpx.AsyncClient, what: str) -> list[dict[str, Any]]:
    reply = await http.get(f"/{what}")
    assert reply.status_code == 200, reply.text
    data: list[dict[str, Any]] = reply.json()["data"]
    return data


def unsupported(header: str, route: str) -> dict[str, Any]:
    message = (
        f"{header} does not apply to {route}: give a batch's routing limits in each request's body in the batch file "
        f"({FIELDS[header]})"
    )
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": header, "code": "unsupported_parameter"}
    }


def unknown(header: str) -> dict[str, Any]:
    message = f"unknown header {header}: the x-router-* headers are {KNOWN}"
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": header, "code": "unknown_parameter"}
    }


@pytest.mark.parametrize("header", sorted(FIELDS))
async def test_a_known_router_header_on_an_upload_is_unsupported(edge: Edge, header: str) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await upload(http, {header: "0.01"})
        assert reply.status_code == 400, reply.text
        assert reply.json() == unsupported(header, "POST /v1/files")
        assert await listed(http, "files") == []  # nothing kept


async def test_a_known_router_header_on_a_batch_creation_is_unsupported(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        file_id = (await upload(http)).json()["id"]
        body = {**BATCH, "input_file_id": file_id}
        reply = await http.post("/batches", json=body, headers={"X-Router-Max-Cost-USD": "0.001"})
        assert reply.status_code == 400, reply.text
        assert reply.json() == unsupported("x-router-max-cost-usd", "POST /v1/batches")
        assert await listed(http, "batches") == []  # no batch created, so none of its lines routed uncapped
        assert (await http.post("/batches", json=body)).status_code == 200  # the same batch without the header


@pytest.mark.parametrize("header", ["x-router-max-cost-usdd", "x-router-tenant", "x_router_max_cost_usd"])
async def test_an_unknown_router_header_is_refused_as_on_the_completion_routes(edge: Edge, header: str) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await upload(http, {header: "0.01"})
        assert reply.status_code == 400, reply.text
        assert reply.json() == unknown(header)
        file_id = (await upload(http)).json()["id"]
        reply = await http.post("/batches", json={**BATCH, "input_file_id": file_id}, headers={header: "0.01"})
        assert reply.status_code == 400, reply.text
        assert reply.json() == unknown(header)
        assert await listed(http, "batches") == []


async def test_the_sdk_sending_a_cap_with_its_batch_gets_a_bad_request_naming_it(edge: Edge) -> None:
    client = openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0)
    uploaded = await client.files.create(file=("batch.jsonl", json.dumps(LINE).encode()), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"x-router-quality-target": "0.9"},
        )
    await client.close()
    assert (refused.value.param, refused.value.code) == ("x-router-quality-target", "unsupported_parameter")
