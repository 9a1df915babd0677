"""Budget alerts before the limit: bounded gauges of budget use, and a webhook notified once per budget,
threshold and period (retried through failures; once across routers sharing Redis)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
import uvicorn
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, MemorySource
from services.router.budget_alerts import BudgetWatch, MemoryOnce, RedisOnce
from services.router.operations import Operations
from services.router.store import KEYLESS, Account, Allowance, Hold, MemoryStore, key_id, period_id

PICO = 10**12
ACME, GLOBEX = Account("acme", "k-acme"), Account("globex", "k-globex")


class Webhook:
    """A real HTTP receiver that fails its first `failures` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.received, self.calls = failures, list[dict[str, Any]](), 0
        self.on_call: Callable[[], None] = lambda: None

    async def receive(self, request: Request) -> JSONResponse:
        self.calls += 1
        self.on_call()
        if self.calls <= self.failures:
            return JSONResponse({"error": "try later"}, status_code=503)
        self.received.append(json.loads(await request.body()))
        return JSONResponse({"ok": True})


@asynccontextmanager
async def serving_hook(receive: Callable[[Request], Awaitable[JSONResponse]]) -> AsyncIterator[str]:
    """A real HTTP server on loopback whose POST /hook `receive` answers: its URL. Stopped without waiting for a
    request still being answered (a test may leave one hanging): it is cancelled."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=0)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, Webhook]]:
    hook = Webhook(failures=2)
    async with serving_hook(hook.receive) as url:
        yield url, hook


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LedgerDB]:
    """The SQL ledger the router's operations read budgets from, closed when the test ends."""
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    yield db
    db.close()


def operations_over(store: MemoryStore, allowance: Allowance, ledger: LedgerDB) -> tuple[Operations, LedgerSink]:
    """The router's operations over `store` and `ledger`, and the sink bringing `ledger` up to the store's (drain())."""
    return Operations(store, allowance, ledger), LedgerSink(MemorySource(store), ledger)


async def charge(store: MemoryStore, account: Account, request_id: str, usd_pico: int) -> None:
    record = {"request_id": request_id, "tenant": account.tenant, "key": account.key, "cost_usd": str(usd_pico / PICO)}
    await store.charge(account, Hold(request_id, 0, period_id("day")), usd_pico, record)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_gauges_and_one_webhook_per_threshold_and_period(ledger: LedgerDB, webhook: tuple[str, Webhook]) -> None:
    url, hook = webhook
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day", tenant_pico=10 * PICO), ledger)
    watch = BudgetWatch(operations, MemoryOnce(), url, attempts=3, backoff_s=0.01)
    await charge(store, ACME, "r1", 7 * PICO)
    await charge(store, GLOBEX, "r2", 1 * PICO)
    await sink.drain()
    assert await watch.check() == 0  # 70%: nothing to say
    assert gauge("llmrouter_router_budget_use_ratio", scope="tenant") == pytest.approx(0.7)
    assert gauge("llmrouter_router_budgets_over_threshold", scope="tenant", threshold="0.8") == 0

    await charge(store, ACME, "r3", 1 * PICO)  # 80%
    await sink.drain()
    assert await watch.check() == 1
    assert hook.calls == 3  # two refusals, retried, then delivered
    assert [(m["tenant"], m["threshold"], m["alert"]) for m in hook.received] == [("acme", 0.8, "budget_nearly_spent")]
    assert hook.received[0]["spent_usd"] == "8" and hook.received[0]["limit_usd"] == "10"
    assert await watch.check() == 0  # once per threshold and period
    assert gauge("llmrouter_router_budgets_over_threshold", scope="tenant", threshold="0.8") == 1

    await store.set_limit("tenant", "globex", PICO)  # an override: globex has spent its whole limit
    await charge(store, ACME, "r4", 2 * PICO)  # acme at 100%
    await sink.drain()
    assert await watch.check() == 2
    assert {(m["tenant"], m["threshold"]) for m in hook.received[1:]} == {("acme", 1.0), ("globex", 1.0)}
    assert gauge("llmrouter_router_budget_use_ratio", scope="tenant") == pytest.approx(1.0)
    assert gauge("llmrouter_router_budgets_over_threshold", scope="tenant", threshold="1.0") == 2
    assert await watch.check() == 0


async def test_a_webhook_that_never_answers_is_tried_again_next_round(ledger: LedgerDB) -> None:
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day", tenant_pico=PICO), ledger)
    watch = BudgetWatch(operations, MemoryOnce(), "http://127.0.0.1:9/nowhere", attempts=2, backoff_s=0.01)
    await charge(store, ACME, "r1", PICO)
    await sink.drain()
    assert await watch.check() == 0
    assert watch.once.claimed == {}  # type: ignore[attr-defined]  # released: the next round tries again


async def test_routers_sharing_redis_notify_once(
    redis_url: str, ledger: LedgerDB, webhook: tuple[str, Webhook]
) -> None:
    url, hook = webhook
    hook.failures = 0
    client = redis.Redis.from_url(redis_url)
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day", tenant_pico=PICO), ledger)
    watches = [BudgetWatch(operations, RedisOnce(client), url) for _ in range(3)]
    try:
        await charge(store, ACME, "r1", PICO)
        await sink.drain()
        assert sorted(await asyncio.gather(*(w.check() for w in watches))) == [0, 0, 1]
        assert len(hook.received) == 1
    finally:
        await client.aclose()


async def test_each_tenants_keyless_budget_is_alerted_on_its_own(
    ledger: LedgerDB, webhook: tuple[str, Webhook]
) -> None:
    """Requests without an API key (key id 'anonymous') are held to the key budget on their own tenant's spend: two
    tenants crossing it are two budgets crossed, each notified, not one name notified once."""
    url, hook = webhook
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day", key_pico=PICO), ledger)
    watch = BudgetWatch(operations, MemoryOnce(), url, attempts=3, backoff_s=0.01)
    for tenant in ("acme", "globex"):
        await charge(store, Account(tenant, key_id("")), f"{tenant}-r1", PICO)
    await sink.drain()
    assert await watch.check() == 2
    assert {(m["scope"], m["name"], m["tenant"]) for m in hook.received} == {
        ("key", "anonymous", "acme"),
        ("key", "anonymous", "globex"),
    }
    assert gauge("llmrouter_router_budgets_over_threshold", scope="key", threshold="1.0") == 2
    assert await watch.check() == 0


async def test_a_keyless_limit_no_tenant_uses_yet_is_no_budget_crossed(
    ledger: LedgerDB, webhook: tuple[str, Webhook]
) -> None:
    """A limit set for the key 'anonymous' binds each tenant's keyless requests on that tenant's spend. With none on
    record it shows once, for every tenant ('*'): no one budget, so even a zero limit is no budget used up."""
    url, hook = webhook
    store = MemoryStore()
    operations = Operations(store, Allowance("day"), ledger)
    watch = BudgetWatch(operations, MemoryOnce(), url, attempts=3, backoff_s=0.01)
    await operations.set_budget(None, "key", key_id(""), "0")
    assert [v.every_tenant for v in await operations.budgets(None)] == [True]
    assert await watch.check() == 0 and hook.received == []
    assert gauge("llmrouter_router_budgets_over_threshold", scope="key", threshold="1.0") == 0


class Clock:
    """time.time() as a test sets it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_crossing_read_before_midnight_and_notified_after_it_is_the_old_days_not_the_new_ones(
    ledger: LedgerDB, webhook: tuple[str, Webhook], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch reads every budget, then notifies each crossing in turn (a webhook may take seconds per budget). A day
    ends meanwhile: a budget read spent in the old day is that day's crossing, claimed and said as the old day's.
    Claimed for the new day, it would say the old day's spend as the new day's, and silence the new day's own
    crossing."""
    url, hook = webhook
    hook.failures = 0
    clock = Clock(1_767_225_599.0)  # 2025-12-31 23:59:59 UTC
    monkeypatch.setattr(time, "time", clock)

    def midnight_passes() -> None:  # during the first notification
        clock.now = 1_767_225_601.0  # 2026-01-01 00:00:01 UTC

    hook.on_call = midnight_passes
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day", tenant_pico=PICO), ledger)
    watch = BudgetWatch(operations, MemoryOnce(), url, attempts=1)
    await charge(store, ACME, "r1", PICO)
    await charge(store, GLOBEX, "r2", PICO)
    await sink.drain()
    assert await watch.check() == 2  # both read spent on Dec 31, notified across midnight
    assert [(m["tenant"], m["period_id"], m["period_end"]) for m in hook.received] == [
        ("acme", "20251231", 1_767_225_600),
        ("globex", "20251231", 1_767_225_600),
    ]
    await charge(store, GLOBEX, "r3", PICO)  # globex spends Jan 1's whole budget too
    await sink.drain()
    assert await watch.check() == 1
    assert (hook.received[-1]["tenant"], hook.received[-1]["period_id"]) == ("globex", "20260101")
    assert hook.received[-1]["spent_usd"] == "1" and hook.received[-1]["period_end"] == 1_767_312_000


async def test_a_moved_keys_budget_in_its_new_tenant_is_listed_and_alerted(
    ledger: LedgerDB, webhook: tuple[str, Webhook]
) -> None:
    """A key moved to another tenant (key_move.py) starts its key budget again on the new tenant's shard: two budgets
    of one key id, each on its own tenant's spend. Named by the key id alone, the old tenant's row (first by name) hid
    the new one's from an admin's listing and from the watch: the new tenant spent the key's whole limit, no row
    showing it and no alert."""
    url, hook = webhook
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day", key_pico=10 * PICO), ledger)
    watch = BudgetWatch(operations, MemoryOnce(), url, attempts=3, backoff_s=0.01)
    key = "0123456789abcdef"
    await charge(store, Account("acme", key), "r1", 3 * PICO)  # before the move
    await charge(store, Account("globex", key), "r2", 10 * PICO)  # after it, paid by its new tenant
    await sink.drain()
    listed = [(v.tenant, v.spent_pico) for v in await operations.budgets(None) if v.scope == "key"]
    assert listed == [("acme", 3 * PICO), ("globex", 10 * PICO)]
    assert await watch.check() == 1
    assert [(m["scope"], m["name"], m["tenant"], m["threshold"]) for m in hook.received] == [
        ("key", key, "globex", 1.0)
    ]
    assert gauge("llmrouter_router_budget_use_ratio", scope="key") == pytest.approx(1.0)


async def test_a_tenants_and_a_keyless_budget_notified_before_the_upgrade_are_not_notified_again(
    ledger: LedgerDB, webhook: tuple[str, Webhook]
) -> None:
    """Only a key's own budget took its tenant in its name (a moved key has one per tenant): the routers of the version
    before named a tenant's budget and a keyless request's key budget (already one per tenant) as this one does, so
    the notifications they sent in the period hold after the upgrade. Renamed, each was sent again (the README promises
    that of a key's budget alone)."""
    url, hook = webhook
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day", tenant_pico=10 * PICO, key_pico=10 * PICO), ledger)
    once = MemoryOnce()
    watch = BudgetWatch(operations, once, url, attempts=3, backoff_s=0.01)
    await charge(store, Account("acme", KEYLESS), "r1", 10 * PICO)  # the tenant's and its keyless budget spent
    await sink.drain()
    day = period_id("day")
    # Confirmed by a router of the version before, under the names it gave them.
    for name in ("tenant:acme", f"key:{KEYLESS}@{b'acme'.hex()}"):
        await once.confirm(f"{name}:{day}:1.0", 86400)
    assert await watch.check() == 0
    assert hook.calls == 0


async def test_a_keys_budget_is_told_apart_from_one_whose_name_ends_like_a_tenant(ledger: LedgerDB) -> None:
    """A key budget's name is its key id, '@' and its tenant in hex: a caller's key id may hold '@' and hex digits, so
    a key never used, its limit set (no tenant: nothing on record), was named as another key in a tenant whose hex
    its name ended with, and the listing and the watch (a limit of 0 is spent) kept one of the two."""
    store = MemoryStore()
    operations, sink = operations_over(store, Allowance("day"), ledger)
    await charge(store, Account("ab", "caller:ci"), "r1", PICO)
    await sink.drain()
    await store.set_limit("key", f"caller:ci@{b'ab'.hex()}", 0)  # a caller 'ci@6162' stopped before its first call
    listed = [(v.name, v.tenant, v.limit_pico) for v in await operations.budgets(None) if v.scope == "key"]
    assert listed == [("caller:ci", "ab", None), ("caller:ci@6162", "", 0)]
