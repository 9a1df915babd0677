"""A budget alert is delivered at least once, and once in the normal path. The notification was claimed for its
whole period before the webhook was sent: a router stopped mid-send (a crash, a rolling restart cancelling the
watch) left the claim, and the alert was never sent that period. Now a claim is a lease as long as the sending may
take, confirmed by a 2xx; a send cut short leaves the lease to lapse, and the next check sends it. Real HTTP
webhooks on loopback; the claims in real Redis (a server, and a cluster), shared by the routers' watches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, MemorySource
from services.router.budget_alerts import BudgetWatch, RedisOnce
from services.router.operations import Operations
from services.router.store import Allowance, MemoryStore
from tests.router.test_budget_alerts import ACME, PICO, charge, serving_hook


class Hook:
    """A webhook that answers `status`, after `delay_s`; each call is counted when it arrives."""

    def __init__(self) -> None:
        self.status, self.delay_s = 200, 0.0
        self.calls = 0
        self.delivered: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def receive(self, request: Request) -> JSONResponse:
        self.calls += 1
        self.arrived.set()
        body = json.loads(await request.body())
        await asyncio.sleep(self.delay_s)
        if self.status >= 300:
            return JSONResponse({"error": "down"}, status_code=self.status)
        self.delivered.append(body)
        return JSONResponse({"ok": True})


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, Hook]]:
    receiver = Hook()
    async with serving_hook(receiver.receive) as url:
        yield url, receiver


@pytest.fixture
async def spent(tmp_path: Path) -> AsyncIterator[Operations]:
    """acme's whole daily budget spent: one alert (100%) to send."""
    store = MemoryStore()
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    operations = Operations(store, Allowance("day", tenant_pico=PICO), db)
    await charge(store, ACME, "r1", PICO)
    await LedgerSink(MemorySource(store), db).drain()
    yield operations
    db.close()


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    """The money store's Redis, a server or a cluster, where the router's watch claims its notifications."""
    made = connect(any_redis_url)
    yield made
    await made.aclose()


def watch(operations: Operations, client: Any, url: str) -> BudgetWatch:
    """A router's watch: one attempt of at most 0.5 s, so a lease of 1 s."""
    return BudgetWatch(operations, RedisOnce(client), url, attempts=1, timeout_s=0.5, lease_margin_s=0.5)


async def test_an_alert_whose_sending_was_cancelled_is_sent_by_a_later_check(
    spent: Operations, client: Any, hook: tuple[str, Hook]
) -> None:
    url, receiver = hook
    receiver.delay_s = 10.0  # the webhook is slow: the router is stopped while it waits
    first = watch(spent, client, url)
    sending = asyncio.create_task(first.check())
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    sending.cancel()  # the router stopped mid-send (a crash leaves the same: a lease no one confirms)
    with pytest.raises(asyncio.CancelledError):
        await sending
    receiver.delay_s = 0.0
    other = watch(spent, client, url)  # another router, or this one restarted
    assert await other.check() == 0  # the lease still runs: it may yet be sent, so not now
    await asyncio.sleep(first.lease_s)
    assert await other.check() == 1
    assert [(m["tenant"], m["threshold"]) for m in receiver.delivered] == [("acme", 1.0)]
    assert await other.check() == 0 and await first.check() == 0  # confirmed: once for the period
    assert len(receiver.delivered) == 1


async def test_an_alert_the_webhook_refused_is_sent_by_the_next_check(
    spent: Operations, client: Any, hook: tuple[str, Hook]
) -> None:
    url, receiver = hook
    receiver.status = 500
    router = watch(spent, client, url)
    assert await router.check() == 0 and receiver.calls == 1
    receiver.status = 200
    assert await router.check() == 1  # its lease given back at once: no wait for it to lapse
    assert await router.check() == 0
    assert len(receiver.delivered) == 1


async def test_concurrent_checks_of_routers_send_an_alert_once(
    spent: Operations, client: Any, hook: tuple[str, Hook]
) -> None:
    url, receiver = hook
    receiver.delay_s = 0.2  # the sends would overlap
    routers = [watch(spent, client, url) for _ in range(4)]
    for _ in range(3):
        await asyncio.gather(*(router.check() for router in routers))
    assert receiver.calls == 1 and len(receiver.delivered) == 1
