"""Shared state of the router: rate limits, budgets, the charge ledger and the response cache.

Redis in production (every check or charge is one Lua call, atomic across replicas); an in-process store
with the same behaviour when no Redis URL is set, so the stack runs with nothing else installed.
Money is stored as integer pico-dollars (1e-12 USD): registry prices have at most 6 decimals per 1M tokens,
so every cost is an exact integer there and sums never drift.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

PICO = Decimal(10) ** 12
LEDGER_MAXLEN = 100_000
CHARGE_DEDUPE_S = 7 * 24 * 3600


def to_pico(usd: Decimal) -> int:
    return int((usd * PICO).to_integral_value(rounding=ROUND_CEILING))


def from_pico(pico: int) -> Decimal:
    return (Decimal(pico) / PICO).normalize() if pico else Decimal(0)


def key_id(api_key: str) -> str:
    """Budgets and ledger refer to a key by a hash prefix: the key itself is never stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "anonymous"


@dataclass(frozen=True)
class Account:
    """Who pays: a tenant and, within it, an API key (by its id)."""

    tenant: str
    key: str

    def spend_keys(self, period: str) -> tuple[str, str]:
        return f"llmrouter:spend:tenant:{self.tenant}:{period}", f"llmrouter:spend:key:{self.key}:{period}"

    def limit_keys(self) -> tuple[str, str]:
        """Where operators set a tenant's or key's own limit (pico-USD), overriding the default."""
        return f"llmrouter:limit:tenant:{self.tenant}", f"llmrouter:limit:key:{self.key}"


def period_id(period: str, now: float | None = None) -> str:
    day = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return {"day": day.strftime("%Y%m%d"), "month": day.strftime("%Y%m"), "total": "all"}[period]


PERIOD_TTL_S = {"day": 2 * 86400, "month": 62 * 86400, "total": 0}


@dataclass(frozen=True)
class Allowance:
    """What an account may do: requests per minute (0: unlimited) and spend per period, in pico-USD (None:
    unlimited). A limit stored for a tenant or key overrides these defaults."""

    period: str
    per_minute: int = 0
    tenant_pico: int | None = None
    key_pico: int | None = None


class Store(Protocol):
    async def admit(self, account: Account, allowance: Allowance) -> str:
        """Count one request in: '' when it may go on, else what stops it: 'rate' (over the requests this
        minute), 'tenant' or 'key' (that budget is spent)."""

    async def charge(self, request_id: str, account: Account, period: str, pico: int, record: dict) -> bool:
        """Add the cost to both budgets and the record to the ledger, once per request id.
        Returns False when this request id was charged before (nothing is added again)."""

    async def spent(self, account: Account, period: str) -> tuple[int, int]: ...

    async def cache_get(self, key: str) -> bytes | None: ...

    async def cache_set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def close(self) -> None: ...


# One round trip per request in: the rate count, then both budgets.
_ADMIT_LUA = """
if tonumber(ARGV[1]) > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], 61) end
  if n > tonumber(ARGV[1]) then return 'rate' end
end
local checks = {{KEYS[2], KEYS[3], ARGV[2], 'tenant'}, {KEYS[4], KEYS[5], ARGV[3], 'key'}}
for _, c in ipairs(checks) do
  local limit = redis.call('GET', c[2]) or c[3]
  if limit ~= '' and tonumber(redis.call('GET', c[1]) or '0') >= tonumber(limit) then return c[4] end
end
return ''
"""

_CHARGE_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
for i = 2, 3 do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'record', ARGV[3])
return 1
"""

LEDGER = "llmrouter:ledger"


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # imported here: the in-process store must not need it

        # A blocking pool: under a burst, calls wait for a connection instead of failing.
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=5)
        self.redis = redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self._admit = self.redis.register_script(_ADMIT_LUA)
        self._charge = self.redis.register_script(_CHARGE_LUA)

    async def admit(self, account: Account, allowance: Allowance) -> str:
        rate = f"llmrouter:rate:{account.tenant}:{account.key}:{int(time.time() // 60)}"
        tenant_spend, key_spend = account.spend_keys(period_id(allowance.period))
        tenant_limit, key_limit = account.limit_keys()
        unlimited = ""
        args = [
            allowance.per_minute,
            unlimited if allowance.tenant_pico is None else allowance.tenant_pico,
            unlimited if allowance.key_pico is None else allowance.key_pico,
        ]
        result = await self._admit(keys=[rate, tenant_spend, tenant_limit, key_spend, key_limit], args=args)
        return result.decode() if isinstance(result, bytes) else str(result or "")

    async def charge(self, request_id: str, account: Account, period: str, pico: int, record: dict) -> bool:
        tenant_spend, key_spend = account.spend_keys(period_id(period))
        keys = [f"llmrouter:charged:{request_id}", tenant_spend, key_spend, LEDGER]
        args: list[int | str] = [pico, CHARGE_DEDUPE_S, json.dumps(record), PERIOD_TTL_S[period], LEDGER_MAXLEN]
        return bool(await self._charge(keys=keys, args=args))

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        values = await self.redis.mget(account.spend_keys(period_id(period)))
        return int(values[0] or 0), int(values[1] or 0)

    async def cache_get(self, key: str) -> bytes | None:
        value = await self.redis.get(f"llmrouter:cache:{key}")
        return value.encode() if isinstance(value, str) else value

    async def cache_set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self.redis.set(f"llmrouter:cache:{key}", value, ex=ttl_s)

    async def close(self) -> None:
        await self.redis.aclose()


class MemoryStore:
    """Same semantics as RedisStore for one process; each method runs without awaiting, so it is atomic."""

    MAX_CACHE_ENTRIES = 10_000

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.charged: set[str] = set()
        self.ledger: list[dict] = []
        self.cache: dict[str, tuple[float, bytes]] = {}
        self.rate_window, self.rate_counts = 0, dict[str, int]()

    async def admit(self, account: Account, allowance: Allowance) -> str:
        if allowance.per_minute:
            window, subject = int(time.time() // 60), f"{account.tenant}:{account.key}"
            if window != self.rate_window:
                self.rate_window, self.rate_counts = window, {}
            self.rate_counts[subject] = self.rate_counts.get(subject, 0) + 1
            if self.rate_counts[subject] > allowance.per_minute:
                return "rate"
        tenant_spend, key_spend = account.spend_keys(period_id(allowance.period))
        tenant_limit, key_limit = account.limit_keys()
        checks = [
            (tenant_spend, self.limits.get(tenant_limit, allowance.tenant_pico), "tenant"),
            (key_spend, self.limits.get(key_limit, allowance.key_pico), "key"),
        ]
        for spend_key, limit, name in checks:
            if limit is not None and self.counters.get(spend_key, 0) >= limit:
                return name
        return ""

    async def charge(self, request_id: str, account: Account, period: str, pico: int, record: dict) -> bool:
        if request_id in self.charged:
            return False
        self.charged.add(request_id)
        for spend_key in account.spend_keys(period_id(period)):
            self.counters[spend_key] = self.counters.get(spend_key, 0) + pico
        self.ledger.append(record)
        del self.ledger[:-LEDGER_MAXLEN]
        return True

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        tenant_spend, key_spend = account.spend_keys(period_id(period))
        return self.counters.get(tenant_spend, 0), self.counters.get(key_spend, 0)

    async def cache_get(self, key: str) -> bytes | None:
        expires, value = self.cache.get(key, (0.0, b""))
        return value if expires > time.monotonic() else None

    async def cache_set(self, key: str, value: bytes, ttl_s: int) -> None:
        now = time.monotonic()
        if len(self.cache) >= self.MAX_CACHE_ENTRIES:
            self.cache = {k: v for k, v in self.cache.items() if v[0] > now}
            if len(self.cache) >= self.MAX_CACHE_ENTRIES:
                del self.cache[next(iter(self.cache))]  # the oldest insertion
        self.cache[key] = (now + ttl_s, value)

    async def close(self) -> None:
        self.cache.clear()


def open_store(redis_url: str | None) -> Store:
    return RedisStore(redis_url) if redis_url else MemoryStore()
