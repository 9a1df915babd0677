"""A trusted caller's tenant name on the operator RPCs (Stats, Budgets) is checked as a request's tenant is: one the
router refuses elsewhere (a NUL, too long, not UTF-8) is INVALID_ARGUMENT naming it, on either SQL ledger. A NUL
reached PostgreSQL, whose driver refuses it in text: an INTERNAL error, not the caller's mistake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.server import start_server
from llmrouter.v1 import operator_pb2, operator_pb2_grpc
from services.ledger.db import LedgerDB
from services.router.admission import MAX_ID_CHARS
from services.router.operations import Operations
from services.router.operator_servicer import OperatorServicer
from services.router.settings import RouterSettings
from services.router.store import Allowance, MemoryStore

Call = Callable[[str], Awaitable[object]]


@pytest.fixture
async def operator(ledger_db: LedgerDB, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    """The router's Operator service over `ledger_db`, behind the router's own gRPC server on loopback; the caller is
    trusted to act for tenants (auth=none), as the edge is."""
    servicer = OperatorServicer(Operations(MemoryStore(), Allowance("day"), ledger_db))
    settings = RouterSettings(port=0, data_dir=tmp_path / "data")
    add = operator_pb2_grpc.add_OperatorServicer_to_server
    running = await start_server("router", settings, {"llmrouter.v1.Operator": lambda server: add(servicer, server)})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(0)


def calls(channel: grpc.aio.Channel) -> dict[str, Call]:
    stub = operator_pb2_grpc.OperatorStub(channel)
    return {
        "stats": lambda tenant: stub.Stats(operator_pb2.StatsRequest(tenant=tenant, group_by="model"), timeout=10),
        "budgets": lambda tenant: stub.Budgets(operator_pb2.BudgetsRequest(tenant=tenant), timeout=10),
    }


@pytest.mark.parametrize("rpc", ["stats", "budgets"])
@pytest.mark.parametrize(
    ("tenant", "complaint"),
    [("acme\x00globex", "NUL"), ("t" * (MAX_ID_CHARS + 1), f"at most {MAX_ID_CHARS}")],
    ids=["nul", "too-long"],
)
async def test_a_tenant_name_the_router_refuses_is_invalid_argument(
    operator: grpc.aio.Channel, rpc: str, tenant: str, complaint: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls(operator)[rpc](tenant)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    error = ServiceError.from_rpc_error(err.value)
    assert complaint in error.message and error.metadata.get("field") == "tenant"


# Each request's tenant field (StatsRequest's is number 4, BudgetsRequest's 1) holding 4 bytes that are not UTF-8.
@pytest.mark.parametrize(("method", "tag"), [("Stats", b"\x22"), ("Budgets", b"\x0a")])
async def test_a_tenant_name_that_is_no_utf8_is_invalid_argument(
    operator: grpc.aio.Channel, method: str, tag: bytes
) -> None:
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = operator.unary_unary(f"/llmrouter.v1.Operator/{method}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(tag + b"\x04\xff\xfe\xfd\xfc", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("tenant", ["", "MAX", "acme"])
async def test_a_tenant_name_the_router_takes_is_answered(operator: grpc.aio.Channel, tenant: str) -> None:
    tenant = "t" * MAX_ID_CHARS if tenant == "MAX" else tenant
    stats = await calls(operator)["stats"](tenant)
    assert isinstance(stats, operator_pb2.StatsResponse) and stats.total.requests == 0
    budgets = await calls(operator)["budgets"](tenant)
    assert isinstance(budgets, operator_pb2.BudgetsResponse)
    assert [b.tenant for b in budgets.budgets if b.scope == "tenant"] == [tenant or "default"]
