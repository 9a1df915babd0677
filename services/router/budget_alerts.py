"""Budget alerts before the limit: every `interval_s` the router measures each budget's use (spent / limit)
and exports the highest per scope and how many budgets passed 80% and 100% (bounded gauges for the
PrometheusRules), and, when a webhook is configured, notifies it once per budget, threshold and period.

At least once, and once in the normal path, across routers: the first to claim a notification (SET NX in Redis,
in-process without Redis) takes a lease on it, as long as its sending may take (every attempt, each bounded, and the
back-offs between them), and sends it, retrying; a 2xx confirms it for the period. When every attempt fails the lease
is given back, so the next round tries again; when the router dies or is stopped mid-send (nothing given back), the
lease lapses and the next check after it, on any router, sends it. A notification delivered whose confirmation was
lost (a crash between the two) is sent again: a duplicate, never a silence.

"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx

from llmrouter.redis_connect import connect
from llmrouter.redis_scripts import Script
from llmrouter.tasks import stop as stop_task
from services.router import metrics
from services.router.budgets import SCOPES, BudgetView, usd
from services.router.operations import ALL, Operations
from services.router.settings import RouterSettings

log = logging.getLogger("llmrouter.router.budgets")

THRESHOLDS = (0.8, 1.0)
TOTAL_PERIOD_TTL_S = 400 * 86400
# How much longer than its sending may take a notification's lease lasts: the claim's and the confirmation's round
# trips, and a slow event loop.
LEASE_MARGIN_S = 5.0


def use(view: BudgetView) -> float | None:
    """Spent (with what a moved key carried: budgets.BudgetView.carried_pico) / limit; None for an unlimited budget,
    and for the keyless limit shown for every tenant (no one budget: each tenant's is its own view). A zero limit is
    used up."""
    if view.limit_pico is None or view.every_tenant:
        return None
    return (view.spent_pico + view.carried_pico) / view.limit_pico if view.limit_pico else 1.0


class Once(Protocol):
    async def claim(self, key: str, lease_s: float) -> str | None:
        """A lease on the notification, for `lease_s`: its token, or None when it is sent or leased already."""

    async def confirm(self, key: str, ttl_s: int) -> None:
        """The notification is sent: none again for `ttl_s` (its period's rest)."""

    async def release(self, key: str, token: str) -> None:
        """The lease of `token` given back (its sending failed): the next round may claim it."""


SENT = "sent"


class MemoryOnce:
    def __init__(self) -> None:
        self.claimed: dict[str, tuple[str, float]] = {}  # key -> (lease token, or SENT; until)

    async def claim(self, key: str, lease_s: float) -> str | None:
        now = time.time()
        if self.claimed.get(key, ("", 0.0))[1] > now:
            return None
        self.claimed = {k: held for k, held in self.claimed.items() if held[1] > now}  # forget finished periods
        token = uuid.uuid4().hex
        self.claimed[key] = (token, now + lease_s)
        return token

    async def confirm(self, key: str, ttl_s: int) -> None:
        self.claimed[key] = (SENT, time.time() + ttl_s)

    async def release(self, key: str, token: str) -> None:
        if self.claimed.get(key, ("", 0.0))[0] == token:
            del self.claimed[key]


# Deleted only while it is still this lease: one lapsed and taken by another router since, or confirmed, stays.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisOnce:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._release = Script(client, _RELEASE)

    async def claim(self, key: str, lease_s: float) -> str | None:
        token = uuid.uuid4().hex
        leased = await self.client.set(_alert_key(key), token, nx=True, px=max(1, int(lease_s * 1000)))
        return token if leased else None

    async def confirm(self, key: str, ttl_s: int) -> None:
        await self.client.set(_alert_key(key), SENT, ex=ttl_s)

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[_alert_key(key)], args=[token])


def _alert_key(key: str) -> str:
    return f"llmrouter:budget-alert:{key}"


class BudgetWatch:
    def __init__(
        self,
        operations: Operations,
        once: Once,
        webhook_url: str = "",
        attempts: int = 3,
        backoff_s: float = 1.0,
        timeout_s: float = 5.0,
        lease_margin_s: float = LEASE_MARGIN_S,
    ) -> None:
        self.operations = operations
        self.once = once
        self.webhook_url = webhook_url
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        # A notification's lease outlasts its sending (every attempt is cut at timeout_s): no other check sends it
        # meanwhile. Only a sender stopped mid-way (a crash) leaves it to lapse, and the next check to send it.
        backoffs = sum(backoff_s * 2**attempt for attempt in range(attempts - 1))
        self.lease_s = attempts * timeout_s + backoffs + lease_margin_s

    async def check(self) -> int:
        """Measure every budget, export the gauges, notify new crossings; returns how many were notified."""
        views = await self.operations.budgets(ALL)
        for scope in SCOPES:
            uses = [u for v in views if v.scope == scope and (u := use(v)) is not None]
            metrics.BUDGET_USE.labels(scope).set(max(uses, default=0.0))
            for threshold in THRESHOLDS:
                metrics.BUDGETS_OVER.labels(scope, str(threshold)).set(sum(u >= threshold for u in uses))
        if not self.webhook_url:
            return 0
        sent = 0
        for view in views:
            used = use(view)
            crossed = [t for t in THRESHOLDS if used is not None and used >= t]
            if crossed and await self._notify_once(view, max(crossed), used or 0.0):
                sent += 1
        return sent

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # the store or the ledger away: the next round tries again
                log.warning("budget check failed", extra={"error": str(exc)})
            await asyncio.sleep(interval_s)

    async def _notify_once(self, view: BudgetView, threshold: float, used: float) -> bool:
        # The period the view's spend was read for, not the one now: the notifications before this one may have taken
        # the watch past the period's end, and a crossing claimed for the next period would silence that one's own.
        period = view.period_id
        key = f"{view.ident}:{period}:{threshold}"
        ttl = view.period_end - int(time.time()) + 86400 if view.period_end else TOTAL_PERIOD_TTL_S
        token = await self.once.claim(key, self.lease_s)
        if token is None:
            return False
        payload = {
            "alert": "budget_spent" if threshold >= 1 else "budget_nearly_spent",
            "threshold": threshold,
            "use": round(used, 6),
            "scope": view.scope,
            "name": view.name,
            "tenant": view.tenant,
            "limit_usd": usd(view.limit_pico),
            "spent_usd": usd(view.spent_pico),
            "carried_usd": usd(view.carried_pico or None),
            "period": view.period,
            "period_id": period,
            "period_end": view.period_end,
        }
        if await self._post(payload):
            await self.once.confirm(key, max(ttl, 60))
            return True
        await self.once.release(key, token)
        return False

    async def _post(self, payload: dict[str, Any]) -> bool:
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            for attempt in range(self.attempts):
                try:
                    async with asyncio.timeout(self.timeout_s):  # the whole attempt, however slowly answered
                        reply = await http.post(self.webhook_url, json=payload)
                    if reply.is_success:
                        return True
                    failure = f"HTTP {reply.status_code}"
                except (httpx.HTTPError, TimeoutError) as exc:
                    failure = exc.__class__.__name__
                log.warning("budget webhook failed", extra={"attempt": attempt + 1, "error": failure})
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(self.backoff_s * 2**attempt)
        return False


def start_budget_watch(settings: RouterSettings, operations: Operations) -> Callable[[], Awaitable[None]]:
    """The watch as a background task of the router; returns its closer."""
    client = None
    if settings.redis_url:
        client = connect(settings.redis_url)
    once: Once = RedisOnce(client) if client is not None else MemoryOnce()
    watch = BudgetWatch(operations, once, settings.budget_alert_webhook_url.get_secret_value())
    task = asyncio.create_task(watch.run(settings.budget_watch_interval_s))

    async def stop() -> None:
        await stop_task(task)
        if client is not None:
            await client.aclose()

    return stop
