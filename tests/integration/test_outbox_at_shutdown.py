"""A router stopped gracefully (a rolling update's SIGTERM) lands its outbox before it exits: the outbox lives on the
pod's temporary volume, deleted with the pod, and a charge left there would be settled by the reconciler at its hold,
the worst case, not at what was generated. A real router process, a real Redis behind a proxy that takes it out of
reach while a charge is written, and the chain's real providers and fake upstreams."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.v1 import router_pb2_grpc
from services.router.settings import MAX_HEARTBEAT_TTL_S
from services.router.store import Account, AccountKeys, Pending, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.integration.conftest import Chain
from tests.integration.test_money_faults import RouterProcess, ask, pending_of, wait_for
from tests.redis_servers import RedisServer, money_redis


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


async def test_a_charge_kept_in_the_outbox_lands_at_its_cost_when_the_router_stops(
    chain: Chain, money: RedisServer, tmp_path: Path
) -> None:
    name = f"stopping-{uuid.uuid4().hex[:8]}"
    db: Any = redis.from_url(money.url)
    async with LossyProxy("127.0.0.1", money.port) as proxy:
        # No upkeep round after the first within the test (40 s apart, the longest the heartbeat's TTL allows): only
        # the shutdown's replay can land the outbox.
        router = RouterProcess(
            chain,
            tmp_path,
            ROUTER_REDIS_URL=proxy.url_for(money.url),
            ROUTER_INSTANCE_ID=name,
            ROUTER_UPKEEP_INTERVAL_S=str(MAX_HEARTBEAT_TTL_S / 3),
            ROUTER_HEARTBEAT_TTL_S=str(MAX_HEARTBEAT_TTL_S),
        )
        chain.premium.latency = 2.0  # the upstream is still working when the store goes out of reach
        try:
            await router.ready()
            sent_before = len(chain.premium.requests)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
                request = ask("strong-model")
                call = asyncio.ensure_future(router_pb2_grpc.RouterStub(channel).Complete(request, timeout=30))
                (raw,) = await wait_for(lambda: pending_of(db, name))
                pending = Pending.from_json(raw)

                async def reached() -> bool:  # admitted, its reply read: the attempt is with the upstream
                    return len(chain.premium.requests) > sent_before

                await wait_for(reached)
                proxy.go_down()
                answer = await call  # charged through the outbox
            outbox = tmp_path / "router-data" / "charges-outbox.jsonl"
            assert [line for line in outbox.read_text().splitlines() if line.strip()]
            assert await ledger_records(db) == []

            proxy.come_back()
            router.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(router.process.wait, 60) == 0
        finally:
            chain.premium.latency = 0.0
            router.kill()

        cost = to_pico(Decimal(answer.cost_usd))
        assert 0 < cost < pending.hold_pico  # what was generated, well under the worst case held for
        (record,) = await ledger_records(db)  # landed once
        assert record["request_id"] == pending.request_id and record["outcome"] == "ok"
        assert Decimal(record["cost_usd"]) == Decimal(answer.cost_usd)
        keys = AccountKeys.of(Account(pending.tenant, pending.key))
        assert int(await db.get(keys.spend(period_id("day"))[0])) == cost  # at its cost, never its hold
        assert await db.zcard(keys.held()[0]) == 0  # the hold released
        assert await pending_of(db, name) == []  # nothing left for the reconciler to settle at the hold
        assert not [line for line in outbox.read_text().splitlines() if line.strip()]
    await db.aclose()
