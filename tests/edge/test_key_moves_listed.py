"""An admin lists the key moves on record (README, *A key serves one tenant*) through the edge: GET
/v1/router/key-moves, the router's KeyMoves as JSON, the latest first; a tenant's key is refused 403, a bad limit or an
unknown parameter 400. The real edge in front of the router's Operator service on loopback, over a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from llmrouter.cli.__main__ import main
from llmrouter.server import start_server
from llmrouter.v1 import operator_pb2_grpc
from services.edge.keys import key_line
from services.ledger.db import LedgerDB
from services.router.operations import Operations
from services.router.operator_servicer import OperatorServicer
from services.router.settings import RouterSettings
from services.router.store import Allowance, RedisStore
from tests.integration.conftest import quiet_edge_settings, served_edge

ADMIN_KEY, TENANT_KEY = "sk-moves-admin", "sk-moves-tenant"
KEY = "0123456789abcdef"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    made = RedisStore(redis_url)
    yield made
    await made.close()


@pytest.fixture
async def edge(tmp_path: Path, store: RedisStore) -> AsyncIterator[str]:
    """A real edge (an admin key and a tenant's) in front of the router's Operator service: its base URL."""
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    servicer = OperatorServicer(Operations(store, Allowance("day"), db))
    add = operator_pb2_grpc.add_OperatorServicer_to_server
    settings = RouterSettings(port=0, data_dir=tmp_path / "data")
    running = await start_server("router", settings, {"llmrouter.v1.Operator": lambda server: add(servicer, server)})
    keys = SecretStr(f"{key_line('ops', ADMIN_KEY)} admin\n{key_line('acme', TENANT_KEY)}")
    settings_edge = quiet_edge_settings(f"127.0.0.1:{running.port}", api_keys=keys)
    try:
        async with served_edge(settings_edge) as base:
            yield base
    finally:
        await running.stop(0)
        db.close()


def as_(base: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30)


async def test_an_admin_lists_the_moves_through_the_edge(edge: str, store: RedisStore) -> None:
    await store.move_key(KEY, "acme", by="alice")
    await store.move_key(KEY, "globex", by="bob")
    listed = {"route": "/v1/router/key-moves", "status": "200"}  # its own route in the request metrics, not 'other'
    before = REGISTRY.get_sample_value("llmrouter_edge_http_requests_total", listed) or 0.0
    async with as_(edge, ADMIN_KEY) as admin:
        answer = await admin.get("/router/key-moves")
        assert answer.status_code == 200, answer.text
        assert REGISTRY.get_sample_value("llmrouter_edge_http_requests_total", listed) == before + 1
        moves = answer.json()["moves"]
        assert [(m["key_id"], m["from_tenant"], m["from_none"], m["to_tenant"], m["by"]) for m in moves] == [
            (KEY, "acme", False, "globex", "bob"),
            (KEY, "", True, "acme", "alice"),
        ]
        assert [m["by"] for m in (await admin.get("/router/key-moves?limit=1")).json()["moves"]] == ["bob"]
        refusals = [("limit=abc", "limit"), ("limit=0", "limit"), ("limit=1001", "limit"), ("tenant=acme", "tenant")]
        for query, param in refusals:
            refused = await admin.get(f"/router/key-moves?{query}")
            assert refused.status_code == 400, (query, refused.text)
            assert refused.json()["error"]["param"] == param
    async with as_(edge, TENANT_KEY) as tenant:
        assert (await tenant.get("/router/key-moves")).status_code == 403


async def cli(*argv: str) -> int:
    """The CLI is synchronous: it runs in a thread so the edge, on this event loop, can answer it."""
    return await asyncio.to_thread(main, list(argv))


async def test_the_cli_lists_them_for_an_admin(
    edge: str, store: RedisStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmrouter key-moves`: a table, the latest first, or the API's JSON; a tenant's key is told 403 in one line."""
    await store.move_key(KEY, "acme", by="alice")
    await store.move_key(KEY, "globex", by="bob")
    assert await cli("--url", edge, "--api-key", ADMIN_KEY, "key-moves") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["when", "key", "id", "from", "to", "by"]
    moves = [line.split()[-4:] for line in lines[2:]]
    assert moves == [[KEY, "acme", "globex", "bob"], [KEY, "(none)", "acme", "alice"]]
    assert await cli("--url", edge, "--api-key", ADMIN_KEY, "--json", "key-moves", "--limit", "1") == 0
    assert [m["by"] for m in json.loads(capsys.readouterr().out)["moves"]] == ["bob"]
    assert await cli("--url", edge, "--api-key", TENANT_KEY, "key-moves") == 1
    assert capsys.readouterr().err.startswith("llmrouter key-moves: HTTP 403")
