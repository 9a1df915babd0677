"""An auditor asks of any limit a tenant was held to who set it, when and what it was before: the router recorded
nothing of an admin's PUT or DELETE of /v1/router/budgets (the access log has the path, not the admin, nor the limit).
Each change is now a log line of the router naming the admin key's id (never the key) and the caller it came through,
the limit before and after. The real edge, an admin key among its keys, in front of the router's Operator service on
loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from pydantic import SecretStr

from llmrouter.server import start_server
from llmrouter.v1 import operator_pb2, operator_pb2_grpc
from services.edge.keys import key_line
from services.ledger.db import LedgerDB
from services.router.operations import Operations
from services.router.operator_servicer import OperatorServicer
from services.router.settings import RouterSettings
from services.router.store import Allowance, MemoryStore, RedisStore, key_id
from services.router.store.keys import limits_key, shard_of
from tests.fakes.lossy_proxy import LossyProxy
from tests.integration.conftest import quiet_edge_settings, served_edge

ADMIN_KEY = "sk-budget-admin"


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[int]:
    """The router's Operator service on loopback: its port."""
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    servicer = OperatorServicer(Operations(MemoryStore(), Allowance("day"), db))
    add = operator_pb2_grpc.add_OperatorServicer_to_server
    settings = RouterSettings(port=0, data_dir=tmp_path / "data")
    running = await start_server("router", settings, {"llmrouter.v1.Operator": lambda server: add(servicer, server)})
    try:
        yield running.port
    finally:
        await running.stop(0)
        db.close()


@pytest.fixture
async def admin(router: int) -> AsyncIterator[httpx.AsyncClient]:
    """A client calling, with an admin key, a real edge in front of the router's Operator service."""
    keys = SecretStr(key_line("ops", ADMIN_KEY) + " admin")
    edge = quiet_edge_settings(f"127.0.0.1:{router}", api_keys=keys)
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with served_edge(edge) as base, httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        yield client


def changes(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str, str, str]]:
    """The budget changes the router recorded: by whom, scope, name, limit before and after."""
    return [
        (r.by, r.budget_scope, r.budget_name, r.limit_usd_before, r.limit_usd)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("budget limit set")
    ]


async def test_every_budget_change_names_the_admin_and_the_limit_before_and_after(
    admin: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="llmrouter.router")
    for limit in ("5", "0.50000000000019"):
        assert (await admin.put("/router/budgets/tenant/acme", json={"limit_usd": limit})).status_code == 200
    assert (await admin.delete("/router/budgets/tenant/acme")).status_code == 200
    recorded = changes(caplog)
    by = recorded[0][0] if recorded else ""
    assert by.endswith(f"(key {key_id(ADMIN_KEY)})"), by
    assert recorded == [
        (by, "tenant", "acme", "", "5"),  # '' before: the default
        (by, "tenant", "acme", "5", "0.5"),  # the limit set: what was asked, rounded down to whole pico-dollars
        (by, "tenant", "acme", "0.5", ""),
    ]
    assert not any(ADMIN_KEY in str(r.__dict__) for r in caplog.records)


async def test_a_change_sent_with_no_key_names_its_caller_alone(router: int, caplog: pytest.LogCaptureFixture) -> None:
    """A SetBudget with no api_key (an edge of the version before, or a tool of the operator's calling the router
    itself) is recorded as its caller's: not as a key's whose id is that of an empty key."""
    caplog.set_level("INFO", logger="llmrouter.router")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router}") as channel:
        change = operator_pb2.SetBudgetRequest(scope="tenant", name="acme", limit_usd="5", admin=True)
        await operator_pb2_grpc.OperatorStub(channel).SetBudget(change, timeout=30)
    assert changes(caplog) == [("anonymous", "tenant", "acme", "", "5")]  # auth none: every caller is 'anonymous'


async def test_a_change_not_every_shard_confirmed_tells_the_admin_so(tmp_path: Path, redis_url: str) -> None:
    """The money store out of reach once it has recorded a change, before its shard's write was answered: the admin's
    PUT is a 503 budget_limit_unconfirmed saying the routers finish it and setting it again confirms it, not a
    service 'temporarily unavailable' (which reads as a change not made: the routers' upkeep makes it)."""
    parts = urlsplit(redis_url)
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    async with LossyProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        store = RedisStore(proxy.url_for(redis_url))
        servicer = OperatorServicer(Operations(store, Allowance("day"), db))
        add = operator_pb2_grpc.add_OperatorServicer_to_server
        settings = RouterSettings(port=0, data_dir=tmp_path / "data")
        running = await start_server("router", settings, {"llmrouter.v1.Operator": lambda s: add(servicer, s)})
        keys = SecretStr(key_line("ops", ADMIN_KEY) + " admin")
        edge = quiet_edge_settings(f"127.0.0.1:{running.port}", api_keys=keys)
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        try:
            async with served_edge(edge) as base, httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
                lost = proxy.hold_reply_to(limits_key(shard_of("acme")).encode())  # the shard's write of the limit
                changing = asyncio.create_task(c.put("/router/budgets/tenant/acme", json={"limit_usd": "5"}))
                await lost.arrived.wait()
                proxy.go_down()
                answer = await changing
        finally:
            await running.stop(0)
            await store.close()
            db.close()
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    error = answer.json()["error"]
    assert error["code"] == "budget_limit_unconfirmed"
    assert "set it again" in error["message"], error
