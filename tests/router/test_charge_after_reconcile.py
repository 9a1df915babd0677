"""A request is charged once, also when the reconciler settled it at its hold while it ran: its router was taken for
dead (cut off from the money store past its heartbeat), then finished the request once the store was back in reach.
Its own charge must find the pending charge gone and add nothing, however long ago the reconciler's charge (and its
charged marker, which lives ROUTER_REQUEST_ID_TTL_S) was. Real Redis."""

from __future__ import annotations

import asyncio

import pytest

from services.router.store import Account, Allowance, Hold, RedisStore, period_id

DAY = period_id("day")
ACCOUNT = Account("acme", "k-acme")


@pytest.mark.xfail(
    strict=True,
    reason="a router's own charge (late=False) is settled whenever the charged marker is gone, even when its pending "
    "charge was settled already: past the request id TTL the reconciler's charge and the router's both count",
)
async def test_a_request_the_reconciler_settled_is_not_charged_again_by_its_router(redis_url: str) -> None:
    store = RedisStore(redis_url, request_id_ttl_s=1)  # ROUTER_REQUEST_ID_TTL_S=1, shorter than the request
    running = Hold("r-long", 50_000, DAY, "router-cut-off", "n-1")
    try:
        assert (await store.admit(ACCOUNT, Allowance("day"), running)).refused == ""
        # router-cut-off never beats (it cannot reach the store): another router settles its request at its hold.
        assert await store.reconcile("router-alive", 0.2, 3600) == 0  # seen missing once
        await asyncio.sleep(0.3)
        assert await store.reconcile("router-alive", 0.2, 3600) == 1
        assert await store.spent(ACCOUNT, DAY) == (50_000, 50_000)
        await asyncio.sleep(1.2)  # the request runs on; the reconciler's charged marker expires meanwhile
        # Back in reach, router-cut-off charges what the request cost.
        await store.charge(ACCOUNT, running, 20_000, {"request_id": running.request_id, "outcome": "ok"})
        assert await store.spent(ACCOUNT, DAY) == (50_000, 50_000)  # once, at the hold
    finally:
        await store.close()
