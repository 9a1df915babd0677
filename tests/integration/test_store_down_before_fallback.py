"""The money store going away after a request was admitted, while its first attempt fails, before the fallback:
STORE_UNAVAILABLE tells a caller (and the edge's batch runner) that nothing was admitted and the same request id
may be sent again, which the router would then refuse as a duplicate. So an admitted request never ends with it:
when the hold cannot grow for the fallback, the request ends with its attempt's own error, and what it owes is
charged through the outbox, once, when the store is back. Real servers (the chain's providers and fake
upstreams, a router of its own) and a real Redis behind a proxy that takes it down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.errors import ServiceError
from llmrouter.server import RunningServer
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches.runner import not_admitted
from services.edge.app import api_error
from services.router.outbox import Outbox
from services.router.store import Account, AccountKeys, Pending, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.fakes.server import FakeServer, Fault
from tests.integration.conftest import Chain
from tests.integration.test_money_faults import pending_of, wait_for
from tests.integration.test_policy_in_chain import ask, extra_router

UPKEEP_S = 0.2


class ProxiedRouter:
    """A router of its own whose money store (the test Redis) is reached through a LossyProxy."""

    def __init__(self, server: RunningServer, proxy: LossyProxy, direct: redis.Redis, name: str, data: Path) -> None:
        self.server, self.proxy, self.direct, self.name, self.data = server, proxy, direct, name, data
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        self.stub = router_pb2_grpc.RouterStub(self.channel)

    async def admitted(self) -> Pending:
        """The pending charge this router's request left once admitted."""
        (raw,) = await wait_for(lambda: pending_of(self.direct, self.name), timeout=10)
        return Pending.from_json(raw)

    async def records(self, request_id: str) -> list[dict]:
        return [r for r in await ledger_records(self.direct) if r["request_id"] == request_id]


@pytest.fixture
async def proxied_router(chain: Chain, tmp_path: Path) -> AsyncIterator[ProxiedRouter]:
    redis_url = chain.redis_url  # the chain's database, not emptied: records are told apart by request id
    parts = urlsplit(redis_url)
    name = f"down-{uuid.uuid4().hex[:8]}"
    async with LossyProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        server = await extra_router(
            chain,
            redis_url=proxy.url(int(parts.path.strip("/") or 0)),
            instance_id=name,
            data_dir=tmp_path / "data",
            upkeep_interval_s=UPKEEP_S,
        )
        direct = redis.from_url(redis_url)
        running = ProxiedRouter(server, proxy, direct, name, tmp_path / "data")
        try:
            yield running
        finally:
            chain.budget.latency = 0.0
            chain.budget.faults.clear()
            proxy.come_back()
            await running.channel.close()
            await server.stop(1)
            await direct.aclose()


def cheap_first(request_id: str) -> router_pb2.CompleteRequest:
    """Routed to the cheap model first (quality target 0), the strong one its fallback."""
    return ask(
        f"hello {uuid.uuid4().hex}",
        quality_target=0,
        request_id=request_id,
        tenant=f"t-{uuid.uuid4().hex[:8]}",
        api_key=f"sk-{uuid.uuid4().hex}",  # a key of its own: its spend counter is this request's alone
        max_tokens=50,
        escalation="off",
    )


async def call(stub: router_pb2_grpc.RouterStub, request: router_pb2.CompleteRequest, streamed: bool) -> str:
    """The answer's model; a failure raises the router's error."""
    if not streamed:
        return (await stub.Complete(request, timeout=20)).model
    model = ""
    async for chunk in stub.CompleteStream(request, timeout=20):
        model = chunk.final.model or model
    return model


async def down_once_admitted(router: ProxiedRouter, cheap: FakeServer, sent_before: int) -> Pending:
    """Takes the store down as soon as the request is admitted, while its first attempt is still with the
    (slowed) cheap upstream: the next thing the request asks of the store is the fallback's hold growth. Admitted is
    the attempt reaching the upstream, not the pending charge in the store: the router may not have read its
    admission's reply yet, and that reply lost, the admission is undone (STORE_UNAVAILABLE)."""
    pending = await router.admitted()

    async def reached() -> bool:
        return len(cheap.requests) > sent_before

    await wait_for(reached, timeout=10)
    router.proxy.go_down()
    return pending


async def settled_once(router: ProxiedRouter, request_id: str, pending: Pending) -> dict:
    """With the store back, the charge waiting in the outbox lands, once: one ledger record, the spend equal to its
    cost, no hold or pending charge left, the outbox empty, and nothing more after further upkeep rounds."""
    assert len(Outbox(router.data)) == 1  # kept on disk while the store was down
    assert await router.records(request_id) == []
    router.proxy.come_back()
    (record,) = await wait_for(lambda: router.records(request_id), timeout=15)
    await asyncio.sleep(UPKEEP_S * 4)  # more replay rounds: none charges it again
    assert await router.records(request_id) == [record]
    assert len(Outbox(router.data)) == 0
    keys = AccountKeys.of(Account(pending.tenant, pending.key))
    assert pending.key  # the request's own key: no other test's spend shares its counter
    spend = [int(v or 0) for v in await router.direct.mget(*keys.spend(pending.period))]
    assert spend == [to_pico(Decimal(record["cost_usd"]))] * 2
    assert [await router.direct.zcard(k) for k in keys.held()] == [0, 0]
    assert await pending_of(router.direct, router.name) == []
    return record


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_an_unknown_outcome_then_the_store_down_ends_with_the_attempts_error_and_is_charged_once(
    chain: Chain, proxied_router: ProxiedRouter, streamed: bool
) -> None:
    """The cheap attempt's connection is reset once the request was sent (unknown outcome: owed at its worst case),
    and the hold must grow to try the strong model while the store is down: no fallback, the attempt's error."""
    chain.budget.latency = 0.6
    chain.budget.enqueue(Fault.reset())
    strong_calls = len(chain.premium.requests)
    request_id = f"r-{uuid.uuid4().hex}"
    request = cheap_first(request_id)
    sent_before = len(chain.budget.requests)
    calling = asyncio.ensure_future(call(proxied_router.stub, request, streamed))
    pending = await down_once_admitted(proxied_router, chain.budget, sent_before)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await calling
    error = ServiceError.from_rpc_error(failed.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "UPSTREAM_CONNECTION_LOST"), error.message
    assert not not_admitted(error)  # the batch runner records the line's error rather than resending its id
    edge = api_error(failed.value, request_id)
    assert edge.status == 502 and not edge.retry_after
    assert len(chain.premium.requests) == strong_calls  # no fallback was made

    record = await settled_once(proxied_router, request_id, pending)
    assert record["outcome"] == "failed" and Decimal(record["cost_usd"]) > 0  # the reset attempt's worst case
    assert to_pico(Decimal(record["cost_usd"])) <= pending.hold_pico
    # The id was admitted and charged: a resend is a duplicate. A pooled connection the outage broke may fail the
    # first command after it (STORE_UNAVAILABLE, which says to send the same id again, as a caller does).
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await call(proxied_router.stub, request, streamed)
        if ServiceError.from_rpc_error(again.value).reason != "STORE_UNAVAILABLE":
            break
        await asyncio.sleep(UPKEEP_S)
    duplicate = ServiceError.from_rpc_error(again.value)
    assert duplicate.reason == "DUPLICATE_REQUEST"
    # It says what the ledger charged the request of its id (through the outbox), not nothing.
    assert Decimal(duplicate.metadata["charged_usd"]) == Decimal(record["cost_usd"]), duplicate.metadata


async def test_a_refused_attempt_then_the_store_down_still_falls_back_and_is_charged_once(
    chain: Chain, proxied_router: ProxiedRouter
) -> None:
    """The cheap upstream answers 500, retried once, then 500 again: it owes nothing, so the hold (the plan's
    costliest model at its worst) already covers the strong model and the fallback needs nothing of the store.
    It answers; its charge waits in the outbox and lands once."""
    chain.budget.latency = 0.3
    chain.budget.enqueue(Fault.error(500), Fault.error(500))
    request_id = f"r-{uuid.uuid4().hex}"
    sent_before = len(chain.budget.requests)
    calling = asyncio.ensure_future(call(proxied_router.stub, cheap_first(request_id), False))
    pending = await down_once_admitted(proxied_router, chain.budget, sent_before)
    assert await calling == "strong-model"
    record = await settled_once(proxied_router, request_id, pending)
    assert record["outcome"] == "ok" and record["model"] == "strong-model" and record["fallback"]
