"""A charge kept in the outbox outlives its router's SIGKILL. The money Redis stops while the router generates: the
charge is fsynced to the outbox and the caller answered; the router is killed before any replay. Another router's
reconciler charges the request its hold (it cannot know of that disk); the router restarted on its data directory
replays the charge, which gives back the hold less what the caller was told. Spend, ledger and the caller agree, the
request in the ledger once as a charge."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis

from llmrouter.v1 import router_pb2_grpc
from services.router.store import Account, AccountKeys, Pending, to_pico
from tests.conftest import ledger_records
from tests.integration.conftest import Chain
from tests.integration.test_money_faults import Spawn, ask, money, pending_of, spawn, wait_for
from tests.integration.test_policy_in_chain import extra_router
from tests.redis_servers import RedisServer

__all__ = ["money", "spawn"]  # fixtures


async def test_a_charge_in_the_outbox_of_a_killed_router_lands_once_after_the_reconciler(
    chain: Chain, money: RedisServer, spawn: Spawn, tmp_path: Path
) -> None:
    quick = {"ROUTER_HEARTBEAT_TTL_S": "1", "ROUTER_UPKEEP_INTERVAL_S": "0.2", "ROUTER_DATA_DIR": str(tmp_path / "d")}
    doomed = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="doomed", **quick)
    db: Any = redis.from_url(money.url)
    chain.premium.latency = 1.0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{doomed.port}") as channel:
            request = ask("strong-model")
            call = asyncio.ensure_future(router_pb2_grpc.RouterStub(channel).Complete(request, timeout=30))
            (pending_raw,) = await wait_for(lambda: pending_of(db, "doomed"))
            await db.shutdown()  # AOF: the admission is kept; the charge finds the store gone
            assert money.process is not None
            money.process.wait()
            reply = await call
        doomed.kill()
        assert (tmp_path / "d" / "charges-outbox.jsonl").read_text().strip(), "the charge was not in the outbox"
        told, pending = Decimal(reply.cost_usd), Pending.from_json(pending_raw)
        assert 0 < to_pico(told) < pending.hold_pico

        money.start()  # on its port again: the client reconnects
        survivor = await extra_router(
            chain, redis_url=money.url, instance_id="survivor", heartbeat_ttl_s=1, upkeep_interval_s=0.2,
            data_dir=tmp_path / "survivor",
        )  # fmt: skip
        try:

            async def records() -> list[dict]:
                return [r for r in await ledger_records(db) if r["tenant"] == request.tenant]

            (reconciled,) = await wait_for(records)
            assert reconciled["outcome"] == "reconciled"
            assert to_pico(Decimal(reconciled["cost_usd"])) == pending.hold_pico
            restarted = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="doomed-again", **quick)
            _, given_back = await wait_for(lambda: _two(records))
            back = await restarted.metric("llmrouter_router_cost_given_back_usd_total", model="strong-model")
            assert not await restarted.metric("llmrouter_router_cost_usd_total", model="strong-model")
        finally:
            await survivor.stop(1)
        assert given_back["outcome"] == "given_back"
        assert Decimal(reconciled["cost_usd"]) + Decimal(given_back["cost_usd"]) == told
        assert back == float(-Decimal(given_back["cost_usd"]))  # counted once, by the router that gave it back
        keys = AccountKeys.of(Account(pending.tenant, pending.key))
        assert [int(v) for v in await db.mget(*keys.spend(pending.period))] == [to_pico(told)] * 2
        assert await db.zcard(keys.held()[0]) == 0 and await pending_of(db, "doomed") == []
    finally:
        chain.premium.latency = 0.0
        await db.aclose()


async def _two(records: Any) -> list[dict] | None:
    found = await records()
    return found if len(found) >= 2 else None
