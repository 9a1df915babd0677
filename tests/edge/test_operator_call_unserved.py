"""An edge in front of a router of a version before an operator RPC (KeyMoves, here): the router answers gRPC
UNIMPLEMENTED, and the edge tells the caller so, a 501 saying to upgrade the routers (it was a 502 blaming a provider),
for every operator route alike; the CLI prints the same line and exits 1. The real edge in front of a real gRPC server
on loopback serving the Operator service without KeyMoves (and no Router service: no Decide), over a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from pydantic import SecretStr

from llmrouter.cli.__main__ import main
from llmrouter.server import start_server
from llmrouter.v1 import operator_pb2
from services.edge.keys import key_line
from services.ledger.db import LedgerDB
from services.router.operations import Operations
from services.router.operator_servicer import OperatorServicer
from services.router.settings import RouterSettings
from services.router.store import Allowance, RedisStore
from tests.integration.conftest import quiet_edge_settings, served_edge

ADMIN_KEY = "sk-unserved-admin"
OPERATOR = operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name
UNSERVED = "the router does not serve key moves yet (upgrade the routers)"


def operator_without_key_moves(servicer: OperatorServicer) -> grpc.GenericRpcHandler:
    """The Operator service as a router of the version before KeyMoves serves it: Budgets (and so on), no KeyMoves."""
    budgets = grpc.unary_unary_rpc_method_handler(
        servicer.Budgets,
        request_deserializer=operator_pb2.BudgetsRequest.FromString,
        response_serializer=operator_pb2.BudgetsResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(OPERATOR, {"Budgets": budgets})


@pytest.fixture
async def edge(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[str, int]]:
    """The real edge (an admin key) in front of that router: its base URL and the router's port."""
    store = RedisStore(redis_url)
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    handler = operator_without_key_moves(OperatorServicer(Operations(store, Allowance("day"), db)))
    settings = RouterSettings(port=0, data_dir=tmp_path / "data")
    running = await start_server(
        "router", settings, {OPERATOR: lambda server: server.add_generic_rpc_handlers([handler])}
    )
    keys = SecretStr(f"{key_line('ops', ADMIN_KEY)} admin")
    settings_edge = quiet_edge_settings(f"127.0.0.1:{running.port}", api_keys=keys)
    try:
        async with served_edge(settings_edge) as base:
            yield base, running.port
    finally:
        await running.stop(0)
        db.close()
        await store.close()


async def test_a_router_without_the_rpc_is_told_as_such(edge: tuple[str, int]) -> None:
    base, router_port = edge
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
        assert (await admin.get("/router/budgets")).status_code == 200  # the router answers what it serves
        answer = await admin.get("/router/key-moves")
        assert answer.status_code == 501, answer.text
        assert answer.json() == {
            "error": {"message": UNSERVED, "type": "server_error", "param": None, "code": "not_implemented"}
        }
        assert str(router_port) not in answer.text
        # Every operator route alike, the Router service's Decide too (not served at all here).
        decided = await admin.post("/router/decide", json={"messages": [{"role": "user", "content": "hi"}]})
        assert decided.status_code == 501, decided.text
        told = "the router does not serve routing decisions yet (upgrade the routers)"
        assert decided.json()["error"]["message"] == told


async def test_the_cli_says_so_in_one_line(edge: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = edge
    # The CLI is synchronous: it runs in a thread so the edge, on this event loop, can answer it.
    status = await asyncio.to_thread(main, ["--url", base, "--api-key", ADMIN_KEY, "key-moves"])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.err == f"llmrouter key-moves: HTTP 501: {UNSERVED}\n"
    assert captured.out == ""
