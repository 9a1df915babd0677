"""Two routers on one money Redis, the one holding the reconciler's lease SIGKILLed mid-request: the other, running
all along and kept from reconciling by that lease, takes it once it lapses and settles the dead router's request at
its hold, once: the spend is the hold, the ledger has that one charge, the hold and pending charge are gone, and the
survivor counts it once in its metrics. The killed router restarted on its own data directory adds nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from llmrouter.v1 import router_pb2_grpc
from services.router.store import Account, AccountKeys, Pending
from tests.conftest import ledger_records
from tests.integration.conftest import Chain, instance_of
from tests.integration.test_money_faults import Spawn, ask, money, pending_of, spawn, wait_for
from tests.integration.test_policy_in_chain import extra_router
from tests.redis_servers import RedisServer
from tests.router.lease import lease_holder

__all__ = ["money", "spawn"]  # fixtures


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_lease_holder_killed_mid_request_is_settled_once_by_the_router_beside_it(
    chain: Chain, money: RedisServer, spawn: Spawn, tmp_path: Path
) -> None:
    db: Any = redis.from_url(money.url)
    quick = {"ROUTER_HEARTBEAT_TTL_S": "1", "ROUTER_UPKEEP_INTERVAL_S": "0.2"}
    holder = await spawn(
        ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="holder", ROUTER_DATA_DIR=str(tmp_path / "holder"), **quick
    )
    await wait_for(lambda: _holds_lease(db, "holder"))
    survivor = await extra_router(
        chain,
        redis_url=money.url,
        instance_id="survivor",
        heartbeat_ttl_s=1,
        upkeep_interval_s=0.2,
        data_dir=tmp_path / "survivor",
    )
    reconciled_before = counted("llmrouter_router_reconciled_charges_total")
    cost_before = counted("llmrouter_router_cost_usd_total", model="strong-model")
    chain.premium.latency = 5.0  # the upstream is still working when the router dies
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{holder.port}") as channel:
            request = ask("strong-model")
            call = asyncio.ensure_future(router_pb2_grpc.RouterStub(channel).Complete(request, timeout=30))
            (pending_raw,) = await wait_for(lambda: pending_of(db, "holder"))
            assert await _holds_lease(db, "holder")  # the survivor has been kept from reconciling
            holder.kill()
            with pytest.raises(grpc.aio.AioRpcError):
                await call
        pending = Pending.from_json(pending_raw)

        async def reconciled() -> list[dict]:
            return [r for r in await ledger_records(db) if r["tenant"] == request.tenant]

        (record,) = await wait_for(reconciled)
        assert await _holds_lease(db, "survivor")
        assert record["outcome"] == "reconciled" and record["request_id"] == pending.request_id

        restarted = await spawn(  # its outbox's directory again, under a new instance id, as a restarted pod's
            ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="holder-2", ROUTER_DATA_DIR=str(tmp_path / "holder"), **quick
        )
        await wait_for(lambda: restarted.metric("llmrouter_router_store_up", store="money"))
        assert [r for r in await ledger_records(db) if r["tenant"] == request.tenant] == [record]
        keys = AccountKeys.of(Account(pending.tenant, pending.key))
        assert [int(v) for v in await db.mget(*keys.spend(pending.period))] == [pending.hold_pico] * 2
        assert await db.zcard(keys.held()[0]) == 0 and await pending_of(db, "holder") == []
        assert counted("llmrouter_router_reconciled_charges_total") - reconciled_before == 1
        charged = counted("llmrouter_router_cost_usd_total", model="strong-model") - cost_before
        assert charged == pytest.approx(pending.hold_pico / 1e12)
    finally:
        chain.premium.latency = 0.0
        await survivor.stop(1)
        await db.aclose()


async def _holds_lease(db: Any, router: str) -> bool:
    """Whether a process of the router (its instance id) holds the reconciler's lease."""
    holder = await lease_holder(db)
    return holder is not None and instance_of(holder) == router
