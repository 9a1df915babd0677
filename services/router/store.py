"""Shared state of the router: request ids, rate limits, budgets, the charge ledger and the response cache.

Redis in production (admission and charge are one Lua call each, atomic across replicas); an in-process store
with the same behaviour when no Redis URL is set, so the stack runs with nothing else installed.
Admission holds the request's worst-case cost against both budgets until it is charged or released, and lets
a request in only when spend + holds + its own hold fits each limit, so concurrent requests never spend past
a limit; holds expire on their own if a router dies with requests in flight.
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
REQUEST_ID_TTL_S = 7 * 24 * 3600  # how long a request id stays used (and charged at most once)
HOLD_S = 600  # a hold outlives any request; it only matters when a router dies mid-request


def to_pico(usd: Decimal) -> int:
    return int((usd * PICO).to_integral_value(rounding=ROUND_CEILING))


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

    def hold_keys(self) -> tuple[str, str]:
        return f"llmrouter:held:tenant:{self.tenant}", f"llmrouter:held:key:{self.key}"

    def request_keys(self, request_id: str) -> tuple[str, str]:
        """(used, charged) markers of a request id; per tenant, so tenants cannot collide."""
        return f"llmrouter:request:{self.tenant}:{request_id}", f"llmrouter:charged:{self.tenant}:{request_id}"


@dataclass(frozen=True)
class Hold:
    """A request's worst-case cost, held against its budgets while it runs."""

    request_id: str
    pico: int

    @property
    def member(self) -> str:
        return f"{self.pico}:{self.request_id}"


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


@dataclass(frozen=True)
class Verdict:
    """Admission's answer. `refused` is '' when the request may go on, else why not: 'duplicate' (the id was
    used before), 'rate' (over the requests this minute), 'tenant' or 'key' (that budget cannot hold this
    request on top of its spend and the holds of requests in flight). On a budget refusal, `remaining` is
    what the tighter budget has left (pico-USD): a smaller hold up to it would have been admitted then."""

    refused: str
    remaining: int = 0


class Store(Protocol):
    async def admit(self, account: Account, allowance: Allowance, hold: Hold) -> Verdict:
        """Let one request in when spend + holds + `hold` fits both budgets: its id is then used, it counts
        against the rate limit and `hold` is held against both budgets. Nothing changes when it is refused."""

    async def charge(self, account: Account, period: str, hold: Hold, pico: int, record: dict) -> bool:
        """Add the cost to both budgets and the record to the ledger, once per request id, and drop the hold.
        Returns False when this request id was charged before (nothing is added again)."""

    async def release(self, account: Account, hold: Hold) -> None:
        """Drop the hold of a request that ends without a charge."""

    async def spent(self, account: Account, period: str) -> tuple[int, int]: ...

    async def cache_get(self, key: str) -> bytes | None: ...

    async def cache_set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def close(self) -> None: ...


_ADMIT_LUA = """
-- KEYS: rate, used id, then per budget (tenant, key): spend, limit, holds
-- ARGV: per minute, tenant default limit, key default limit ('' = none), now, hold member, hold expiry, id ttl,
--       hold pico
if redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate', '0'} end
local per_minute = tonumber(ARGV[1])
if per_minute > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= per_minute then return {'rate', '0'} end
-- Amounts are pico-dollar integers up to 2^63, beyond a Lua number's exact 2^53: they are kept as
-- (high, low) pairs of base 10^9 digits, each exact as a Lua number.
local B = 1000000000
local function split(s)
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end
local function add(a_hi, a_lo, b_hi, b_lo)
  local lo = a_lo + b_lo
  return a_hi + b_hi + math.floor(lo / B), lo % B
end
local function less(a_hi, a_lo, b_hi, b_lo)
  return a_hi < b_hi or (a_hi == b_hi and a_lo < b_lo)
end
local budgets = {{KEYS[3], KEYS[4], KEYS[5], ARGV[2], 'tenant'}, {KEYS[6], KEYS[7], KEYS[8], ARGV[3], 'key'}}
local tightest, r_hi, r_lo = '', nil, nil
for _, b in ipairs(budgets) do
  redis.call('ZREMRANGEBYSCORE', b[3], '-inf', ARGV[4])
  local limit = redis.call('GET', b[2]) or b[4]
  if limit ~= '' then
    local u_hi, u_lo = split(redis.call('GET', b[1]) or '0')
    for _, held in ipairs(redis.call('ZRANGE', b[3], 0, -1)) do
      local h_hi, h_lo = split(string.match(held, '^(%d+):'))
      u_hi, u_lo = add(u_hi, u_lo, h_hi, h_lo)
    end
    local l_hi, l_lo = split(limit)
    local left_hi, left_lo = 0, 0  -- limit minus spend and holds, or nothing when they are over it
    if not less(l_hi, l_lo, u_hi, u_lo) then
      left_hi, left_lo = l_hi - u_hi, l_lo - u_lo
      if left_lo < 0 then left_hi, left_lo = left_hi - 1, left_lo + B end
    end
    if r_hi == nil or less(left_hi, left_lo, r_hi, r_lo) then tightest, r_hi, r_lo = b[5], left_hi, left_lo end
  end
end
if r_hi ~= nil then
  local h_hi, h_lo = split(ARGV[8])
  if less(r_hi, r_lo, h_hi, h_lo) then
    return {tightest, r_hi > 0 and string.format('%d%09d', r_hi, r_lo) or string.format('%d', r_lo)}
  end
end
if per_minute > 0 and redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], 61) end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[7])
for _, b in ipairs(budgets) do
  redis.call('ZADD', b[3], ARGV[6], ARGV[5])
  redis.call('EXPIREAT', b[3], ARGV[6])
end
return {'', '0'}
"""

_CHARGE_LUA = """
-- KEYS: charged marker, tenant spend, key spend, ledger, tenant holds, key holds
-- ARGV: pico, marker ttl, record, spend ttl, ledger length, hold member
redis.call('ZREM', KEYS[5], ARGV[6])
redis.call('ZREM', KEYS[6], ARGV[6])
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

    async def admit(self, account: Account, allowance: Allowance, hold: Hold) -> Verdict:
        now = time.time()
        rate = f"llmrouter:rate:{account.tenant}:{account.key}:{int(now // 60)}"
        used, _ = account.request_keys(hold.request_id)
        tenant_spend, key_spend = account.spend_keys(period_id(allowance.period, now))
        tenant_limit, key_limit = account.limit_keys()
        tenant_held, key_held = account.hold_keys()
        keys = [rate, used, tenant_spend, tenant_limit, tenant_held, key_spend, key_limit, key_held]
        none = ""
        args = [
            allowance.per_minute,
            none if allowance.tenant_pico is None else allowance.tenant_pico,
            none if allowance.key_pico is None else allowance.key_pico,
            now,
            hold.member,
            int(now) + HOLD_S,
            REQUEST_ID_TTL_S,
            hold.pico,
        ]
        refused, remaining = await self._admit(keys=keys, args=args)
        return Verdict(refused.decode() if isinstance(refused, bytes) else str(refused), int(remaining))

    async def charge(self, account: Account, period: str, hold: Hold, pico: int, record: dict) -> bool:
        tenant_spend, key_spend = account.spend_keys(period_id(period))
        keys = [account.request_keys(hold.request_id)[1], tenant_spend, key_spend, LEDGER, *account.hold_keys()]
        args: list[int | str] = [
            pico,
            REQUEST_ID_TTL_S,
            json.dumps(record),
            PERIOD_TTL_S[period],
            LEDGER_MAXLEN,
            hold.member,
        ]
        return bool(await self._charge(keys=keys, args=args))

    async def release(self, account: Account, hold: Hold) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for held in account.hold_keys():
                pipe.zrem(held, hold.member)
            await pipe.execute()

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
    MAX_REQUEST_IDS = 1_000_000

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.used: dict[str, None] = {}  # request ids, oldest first; an ordered set with a cap
        self.charged: dict[str, None] = {}
        self.held: dict[str, dict[str, tuple[float, int]]] = {}  # holds key -> member -> (expiry, pico)
        self.ledger: list[dict] = []
        self.cache: dict[str, tuple[float, bytes]] = {}
        self.rate_window, self.rate_counts = 0, dict[str, int]()

    async def admit(self, account: Account, allowance: Allowance, hold: Hold) -> Verdict:
        used_key, _ = account.request_keys(hold.request_id)
        if used_key in self.used:
            return Verdict("duplicate")
        now = time.time()
        window, subject = int(now // 60), f"{account.tenant}:{account.key}"
        if window != self.rate_window:
            self.rate_window, self.rate_counts = window, {}
        if allowance.per_minute and self.rate_counts.get(subject, 0) >= allowance.per_minute:
            return Verdict("rate")
        holds = account.hold_keys()
        budgets = zip(
            account.spend_keys(period_id(allowance.period, now)),
            account.limit_keys(),
            holds,
            (allowance.tenant_pico, allowance.key_pico),
            ("tenant", "key"),
            strict=True,
        )
        tightest, remaining = "", None
        for spend_key, limit_key, held_key, default, name in budgets:
            held = self.held.setdefault(held_key, {})
            for member in [m for m, (expiry, _) in held.items() if expiry <= now]:
                del held[member]
            limit = self.limits.get(limit_key, default)
            if limit is not None:
                left = limit - self.counters.get(spend_key, 0) - sum(p for _, p in held.values())
                if remaining is None or left < remaining:
                    tightest, remaining = name, left
        if remaining is not None and hold.pico > remaining:
            return Verdict(tightest, max(remaining, 0))
        if allowance.per_minute:
            self.rate_counts[subject] = self.rate_counts.get(subject, 0) + 1
        _remember(self.used, used_key, self.MAX_REQUEST_IDS)
        for held_key in holds:
            self.held[held_key][hold.member] = (now + HOLD_S, hold.pico)
        return Verdict("")

    async def charge(self, account: Account, period: str, hold: Hold, pico: int, record: dict) -> bool:
        await self.release(account, hold)
        _, charged_key = account.request_keys(hold.request_id)
        if charged_key in self.charged:
            return False
        _remember(self.charged, charged_key, self.MAX_REQUEST_IDS)
        for spend_key in account.spend_keys(period_id(period)):
            self.counters[spend_key] = self.counters.get(spend_key, 0) + pico
        self.ledger.append(record)
        del self.ledger[:-LEDGER_MAXLEN]
        return True

    async def release(self, account: Account, hold: Hold) -> None:
        for held_key in account.hold_keys():
            self.held.get(held_key, {}).pop(hold.member, None)

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


def _remember(seen: dict[str, None], key: str, cap: int) -> None:
    seen[key] = None
    if len(seen) > cap:
        del seen[next(iter(seen))]  # the oldest: Redis would have expired it first too


def open_store(redis_url: str | None) -> Store:
    return RedisStore(redis_url) if redis_url else MemoryStore()
