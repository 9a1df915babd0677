"""The router's money: request ids, rate limits, budgets, holds, pending charges and the charge ledger.

Redis in production (admission and charge are one Lua call each, atomic across replicas); an in-process store
with the same behaviour when no Redis URL is set, so the stack runs with nothing else installed. The response
cache lives elsewhere (services/router/cache.py): nothing here may be evicted.
Admission holds the request's worst-case cost against both budgets until it is charged or released, and lets
a request in only when spend + holds + its own hold fits each limit, so concurrent requests never spend past
a limit. It also records a pending charge (who pays, the hold, the budget period fixed for the request, the
router serving it). The charge settles it exactly once; a router that dies leaves its pending charges to the
reconciler, which charges them at their hold.
Money is stored as integer pico-dollars (1e-12 USD): registry prices have at most 6 decimals per 1M tokens,
so every cost is an exact integer there and sums never drift.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol

import grpc

from llmrouter.errors import ServiceError
from services.router import metrics

log = logging.getLogger("llmrouter.router")

PICO = Decimal(10) ** 12
REQUEST_ID_TTL_S = 24 * 3600  # default: how long a request id stays used (and charged at most once)
HOLD_S = 600  # a hold outlives any request; after that admission ignores it (the reconciler charges it)
LEDGER = "llmrouter:ledger"
ROUTERS = "llmrouter:routers"  # router instances that may have pending charges
LEASE = "llmrouter:reconciler:lease"
LIMIT_PREFIX = "llmrouter:limit:"


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
        return f"{LIMIT_PREFIX}tenant:{self.tenant}", f"{LIMIT_PREFIX}key:{self.key}"

    def hold_keys(self) -> tuple[str, str]:
        return f"llmrouter:held:tenant:{self.tenant}", f"llmrouter:held:key:{self.key}"

    def request_keys(self, request_id: str) -> tuple[str, str]:
        """(used, charged) markers of a request id; per tenant, so tenants cannot collide."""
        return f"llmrouter:request:{self.tenant}:{request_id}", f"llmrouter:charged:{self.tenant}:{request_id}"


@dataclass(frozen=True)
class Hold:
    """A request's worst-case cost, held against its budgets while it runs, and the budget period (an id
    such as 20261130) it is charged to, fixed at admission. `router` is the instance serving it."""

    request_id: str
    pico: int
    period: str
    router: str = ""

    @property
    def member(self) -> str:
        return f"{self.pico}:{self.request_id}"


@dataclass(frozen=True)
class Pending:
    """A charge recorded at admission and not yet settled: enough to settle it at its hold after a crash.
    `ts` is when it was recorded (or its hold last grown)."""

    tenant: str
    key: str
    request_id: str
    hold_pico: int
    period: str
    router: str
    ts: float

    @classmethod
    def of(cls, account: Account, hold: Hold) -> Pending:
        return cls(account.tenant, account.key, hold.request_id, hold.pico, hold.period, hold.router, time.time())

    @property
    def field(self) -> str:
        return pending_field(Account(self.tenant, self.key), self.request_id)

    def account_and_hold(self) -> tuple[Account, Hold]:
        return Account(self.tenant, self.key), Hold(self.request_id, self.hold_pico, self.period, self.router)


def pending_field(account: Account, request_id: str) -> str:
    """Unambiguous for any tenant and request id (both may hold any character)."""
    return json.dumps([account.tenant, request_id])


def pending_key(router: str) -> str:
    return f"llmrouter:pending:{router}"


def alive_key(router: str) -> str:
    return f"llmrouter:alive:{router}"


def period_id(period: str, now: float | None = None) -> str:
    day = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return {"day": day.strftime("%Y%m%d"), "month": day.strftime("%Y%m"), "total": "all"}[period]


def spend_ttl_s(period: str) -> int:
    """Spend counters outlive their period (a day id has 8 digits, a month 6, 'all' never ends); every charge
    renews the TTL, so a counter is never dropped before its period is over."""
    return {8: 2 * 86400, 6: 62 * 86400}.get(len(period), 0) if period != "all" else 0


class StoreUnavailable(ServiceError):
    """The money store cannot be reached: nothing is admitted without it (fail closed)."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            "the budget store is unreachable; no request is served until it is back",
            {"retry_after_s": "1"},
        )


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
        against the rate limit, `hold` is held against both budgets and a pending charge is recorded. Nothing
        changes when it is refused. StoreUnavailable when the store cannot be reached."""

    async def charge(self, account: Account, hold: Hold, pico: int, record: dict, late: bool = False) -> bool:
        """Settle the pending charge: add the cost to both budgets of the hold's period and the record to the
        ledger, once per request id, and drop the hold. Returns False when this request id was charged before
        (nothing is added again). `late` (an outbox replay, perhaps after the charged marker expired): charge
        only while the pending charge is still open, so a charge the reconciler settled is never added again.
        StoreUnavailable when the store cannot be reached."""

    async def extend(self, account: Account, allowance: Allowance, hold: Hold, pico: int) -> str:
        """Raise a hold to `pico` (before a fallback or escalation that may cost more than it covers): ''
        when both budgets cover spend + every other hold + the new amount, else the budget that does not."""

    async def release(self, account: Account, hold: Hold) -> None:
        """Drop the hold and pending charge of a request that ends without generating anything."""

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        """What the account spent in a period (an id from period_id)."""

    async def heartbeat(self, router: str, ttl_s: float) -> None:
        """Say that this router instance is alive for `ttl_s` more seconds."""

    async def held_pico(self, account: Account) -> tuple[int, int]:
        """What the holds of requests in flight keep from the tenant's and the key's budget (pico-USD)."""

    async def limit_overrides(self) -> dict[tuple[str, str], int]:
        """Every limit set for one tenant or key, by (scope, name): scope is 'tenant' or 'key'."""

    async def set_limit(self, scope: str, name: str, pico: int | None) -> None:
        """Set (or with None remove) the limit of one tenant or key, overriding the default."""

    async def reconcile(self, router: str, lease_s: float, stale_s: float) -> int:
        """When this router holds the reconciler lease: settle the pending charges of routers whose heartbeat
        has been missing for `lease_s` (seen by this router: after a store outage every heartbeat has expired,
        and live routers get that long to renew theirs), each at its hold; and, about every `lease_s`, those
        of live routers left pending for over `stale_s` (no request runs that long: its charge was lost).
        Returns how many were settled."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def reconciled_record(pending: Pending) -> dict[str, Any]:
    """The ledger entry of a charge settled for a dead router: the outcome was never known, so the hold."""
    return {
        "request_id": pending.request_id,
        "ts": time.time(),
        "tenant": pending.tenant,
        "key": pending.key,
        "cost_usd": format(Decimal(pending.hold_pico) / PICO, "f"),  # plain notation, as every charge
        "outcome": "reconciled",
        "router": pending.router,
        "admitted_ts": pending.ts,
    }


# Amounts are pico-dollar integers up to 2^63, beyond a Lua number's exact 2^53: the scripts that add them
# keep them as (high, low) pairs of base 10^9 digits, each exact as a Lua number.
_EXACT_LUA = """
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
"""

# Scripts that take new memory (admission, a hold grown) are refused whole when the store is full (OOM under
# noeviction: a flagged script is checked before it runs, never half-way); a charge or release of what was
# already admitted must land even then (allow-oom): what was served is always paid for. Redis 7 or newer.
_MAY_GROW = "#!lua\n"
_MUST_LAND = "#!lua flags=allow-oom\n"

_ADMIT_LUA = (
    _MAY_GROW
    + _EXACT_LUA
    + """
-- KEYS: rate, used id, then per budget (tenant, key): spend, limit, holds; then pending charges, routers
-- ARGV: per minute, tenant default limit, key default limit ('' = none), now, hold member, hold expiry, id ttl,
--       hold pico, pending field, pending record, router
if redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate', '0'} end
local per_minute = tonumber(ARGV[1])
if per_minute > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= per_minute then return {'rate', '0'} end
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
redis.call('HSET', KEYS[9], ARGV[9], ARGV[10])
redis.call('SADD', KEYS[10], ARGV[11])
return {'', '0'}
"""
)

_CHARGE_LUA = (
    _MUST_LAND
    + """
-- KEYS: charged marker, tenant spend, key spend, ledger, tenant holds, key holds, pending charges
-- ARGV: pico, marker ttl, record, spend ttl, hold member, pending field, late ('1': only if still pending)
redis.call('ZREM', KEYS[5], ARGV[5])
redis.call('ZREM', KEYS[6], ARGV[5])
if redis.call('HDEL', KEYS[7], ARGV[6]) == 0 and ARGV[7] == '1' then return 0 end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
for i = 2, 3 do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
redis.call('XADD', KEYS[4], '*', 'record', ARGV[3])
return 1
"""
)

_RELEASE_LUA = (
    _MUST_LAND
    + """
-- KEYS: tenant holds, key holds, pending charges; ARGV: hold member, pending field
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[2])
"""
)

_EXTEND_LUA = (
    _MAY_GROW
    + _EXACT_LUA
    + """
-- KEYS: per budget (tenant, key): spend, limit, holds; then pending charges
-- ARGV: tenant default limit, key default limit ('' = none), old member, new member, new pico, expiry,
--       pending field, pending record
local budgets = {{KEYS[1], KEYS[2], KEYS[3], ARGV[1], 'tenant'}, {KEYS[4], KEYS[5], KEYS[6], ARGV[2], 'key'}}
for _, b in ipairs(budgets) do
  local limit = redis.call('GET', b[2]) or b[4]
  if limit ~= '' then
    local u_hi, u_lo = split(redis.call('GET', b[1]) or '0')
    local n_hi, n_lo = split(ARGV[5])
    u_hi, u_lo = add(u_hi, u_lo, n_hi, n_lo)
    for _, held in ipairs(redis.call('ZRANGE', b[3], 0, -1)) do
      if held ~= ARGV[3] then
        local h_hi, h_lo = split(string.match(held, '^(%d+):'))
        u_hi, u_lo = add(u_hi, u_lo, h_hi, h_lo)
      end
    end
    local l_hi, l_lo = split(limit)
    if less(l_hi, l_lo, u_hi, u_lo) then return b[5] end
  end
end
for _, b in ipairs(budgets) do
  redis.call('ZREM', b[3], ARGV[3])
  redis.call('ZADD', b[3], ARGV[6], ARGV[4])
  redis.call('EXPIREAT', b[3], ARGV[6])
end
redis.call('HSET', KEYS[7], ARGV[7], ARGV[8])
return ''
"""
)

# Taken (or renewed) by one router at a time; returns 1 when `router` holds it.
_LEASE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_FORGET_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SREM', KEYS[1], ARGV[1])
end
"""


@asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    """Turn a lost connection into StoreUnavailable, and keep the store's up/down gauge true. A primary
    demoted by a failover (READONLY) is out of reach too: nothing was written, so the charge may wait."""
    import redis.exceptions as errors

    try:
        yield
    except (errors.ConnectionError, errors.TimeoutError, errors.ReadOnlyError, OSError) as exc:
        metrics.STORE_UP.labels("money").set(0)
        raise StoreUnavailable() from exc
    except errors.OutOfMemoryError as exc:  # full under noeviction: nothing new is admitted until it has room
        log.error("the money store is full (OOM under noeviction): raise its maxmemory")
        metrics.STORE_UP.labels("money").set(0)
        raise StoreUnavailable() from exc
    metrics.STORE_UP.labels("money").set(1)


class RedisStore:
    def __init__(self, url: str, request_id_ttl_s: int = REQUEST_ID_TTL_S) -> None:
        import redis.asyncio as redis  # imported here: the in-process store must not need it

        # A blocking pool: under a burst, calls wait for a connection instead of failing.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=5, socket_connect_timeout=2, socket_timeout=5
        )
        self.redis = redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self.request_id_ttl_s = request_id_ttl_s
        self._admit = self.redis.register_script(_ADMIT_LUA)
        self._charge = self.redis.register_script(_CHARGE_LUA)
        self._lease = self.redis.register_script(_LEASE_LUA)
        self._extend = self.redis.register_script(_EXTEND_LUA)
        self._forget = self.redis.register_script(_FORGET_LUA)
        self._release = self.redis.register_script(_RELEASE_LUA)
        self._missing_since: dict[str, float] = {}  # routers seen without a heartbeat, since when (monotonic)
        self._last_sweep = float("-inf")  # when live routers' pending charges were last checked for stale ones

    async def admit(self, account: Account, allowance: Allowance, hold: Hold) -> Verdict:
        now = time.time()
        rate = f"llmrouter:rate:{account.tenant}:{account.key}:{int(now // 60)}"
        used, _ = account.request_keys(hold.request_id)
        tenant_spend, key_spend = account.spend_keys(hold.period)
        tenant_limit, key_limit = account.limit_keys()
        tenant_held, key_held = account.hold_keys()
        keys = [rate, used, tenant_spend, tenant_limit, tenant_held, key_spend, key_limit, key_held]
        pending = Pending.of(account, hold)
        none = ""
        args = [
            allowance.per_minute,
            none if allowance.tenant_pico is None else allowance.tenant_pico,
            none if allowance.key_pico is None else allowance.key_pico,
            now,
            hold.member,
            int(now) + HOLD_S,
            self.request_id_ttl_s,
            hold.pico,
            pending.field,
            json.dumps(asdict(pending)),
            hold.router,
        ]
        async with _reachable():
            refused, remaining = await self._admit(keys=[*keys, pending_key(hold.router), ROUTERS], args=args)
        return Verdict(refused.decode() if isinstance(refused, bytes) else str(refused), int(remaining))

    async def charge(self, account: Account, hold: Hold, pico: int, record: dict, late: bool = False) -> bool:
        tenant_spend, key_spend = account.spend_keys(hold.period)
        charged_marker = account.request_keys(hold.request_id)[1]
        keys = [charged_marker, tenant_spend, key_spend, LEDGER, *account.hold_keys(), pending_key(hold.router)]
        args: list[int | str] = [
            pico,
            self.request_id_ttl_s,
            json.dumps(record),
            spend_ttl_s(hold.period),
            hold.member,
            pending_field(account, hold.request_id),
            "1" if late else "0",
        ]
        async with _reachable():
            return bool(await self._charge(keys=keys, args=args))

    async def extend(self, account: Account, allowance: Allowance, hold: Hold, pico: int) -> str:
        tenant_spend, key_spend = account.spend_keys(hold.period)
        tenant_limit, key_limit = account.limit_keys()
        tenant_held, key_held = account.hold_keys()
        keys = [tenant_spend, tenant_limit, tenant_held, key_spend, key_limit, key_held, pending_key(hold.router)]
        grown = replace(hold, pico=pico)
        pending = Pending.of(account, grown)
        args = [
            "" if allowance.tenant_pico is None else allowance.tenant_pico,
            "" if allowance.key_pico is None else allowance.key_pico,
            hold.member,
            grown.member,
            pico,
            int(time.time()) + HOLD_S,
            pending.field,
            json.dumps(asdict(pending)),
        ]
        async with _reachable():
            result = await self._extend(keys=keys, args=args)
        return result.decode() if isinstance(result, bytes) else str(result or "")

    async def release(self, account: Account, hold: Hold) -> None:
        keys = [*account.hold_keys(), pending_key(hold.router)]
        async with _reachable():
            await self._release(keys=keys, args=[hold.member, pending_field(account, hold.request_id)])

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        async with _reachable():
            values = await self.redis.mget(account.spend_keys(period))
        return int(values[0] or 0), int(values[1] or 0)

    async def heartbeat(self, router: str, ttl_s: float) -> None:
        async with _reachable(), self.redis.pipeline(transaction=True) as pipe:
            pipe.set(alive_key(router), str(time.time()), px=int(ttl_s * 1000))
            pipe.sadd(ROUTERS, router)
            await pipe.execute()

    async def held_pico(self, account: Account) -> tuple[int, int]:
        now = time.time()
        tenant, key = [await self.redis.zrangebyscore(k, f"({now}", "+inf") for k in account.hold_keys()]
        return _held_sum(list(tenant)), _held_sum(list(key))

    async def limit_overrides(self) -> dict[tuple[str, str], int]:
        found = {}
        async for name in self.redis.scan_iter(match=f"{LIMIT_PREFIX}*", count=500):
            value = await self.redis.get(name)
            if value is not None:
                found[_limit_subject(name.decode() if isinstance(name, bytes) else name)] = int(value)
        return found

    async def set_limit(self, scope: str, name: str, pico: int | None) -> None:
        if pico is None:
            await self.redis.delete(f"{LIMIT_PREFIX}{scope}:{name}")
        else:
            await self.redis.set(f"{LIMIT_PREFIX}{scope}:{name}", pico)

    async def reconcile(self, router: str, lease_s: float, stale_s: float) -> int:
        async with _reachable():
            if not await self._lease(keys=[LEASE], args=[router, int(lease_s * 1000)]):
                return 0
            settled, now = 0, time.monotonic()
            sweep = now - self._last_sweep >= lease_s
            self._last_sweep = now if sweep else self._last_sweep
            for raw in await self.redis.smembers(ROUTERS):
                other = raw.decode() if isinstance(raw, bytes) else raw
                if other == router or await self.redis.exists(alive_key(other)):
                    self._missing_since.pop(other, None)
                    if sweep:
                        settled += await self._settle_pending(other, time.time() - stale_s)
                    continue
                if now - self._missing_since.setdefault(other, now) < lease_s:
                    continue
                settled += await self._settle_pending(other, None)
                # Its pending charges are all settled: forget it, unless it came back meanwhile.
                await self._forget(keys=[ROUTERS, pending_key(other), alive_key(other)], args=[other])
                self._missing_since.pop(other, None)
            return settled

    async def _settle_pending(self, router: str, before: float | None) -> int:
        """Charge a router's pending charges (those recorded before `before`, when given) at their hold."""
        settled = 0
        for value in (await self.redis.hgetall(pending_key(router))).values():
            pending = Pending(**json.loads(value))
            if before is None or pending.ts < before:
                account, hold = pending.account_and_hold()
                settled += await self.charge(account, hold, hold.pico, reconciled_record(pending))
        return settled

    async def ping(self) -> bool:
        try:
            async with _reachable():
                await self.redis.ping()
        except StoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self.redis.aclose()


class MemoryStore:
    """Same semantics as RedisStore for one process; each method runs without awaiting, so it is atomic.
    Nothing outlives the process, so there is nothing to reconcile."""

    MAX_REQUEST_IDS = 1_000_000

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.used: dict[str, None] = {}  # request ids, oldest first; an ordered set with a cap
        self.charged: dict[str, None] = {}
        self.held: dict[str, dict[str, tuple[float, int]]] = {}  # holds key -> member -> (expiry, pico)
        self.pending: dict[str, Pending] = {}
        self.ledger: list[dict] = []
        self.ledger_appended = 0  # every record ever appended: the SQL sink's cursor counts against it
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
            account.spend_keys(hold.period),
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
        pending = Pending.of(account, hold)
        self.pending[pending.field] = pending
        return Verdict("")

    async def charge(self, account: Account, hold: Hold, pico: int, record: dict, late: bool = False) -> bool:
        was_pending = pending_field(account, hold.request_id) in self.pending
        await self.release(account, hold)
        _, charged_key = account.request_keys(hold.request_id)
        if charged_key in self.charged or (late and not was_pending):
            return False
        _remember(self.charged, charged_key, self.MAX_REQUEST_IDS)
        for spend_key in account.spend_keys(hold.period):
            self.counters[spend_key] = self.counters.get(spend_key, 0) + pico
        self.ledger.append(record)
        self.ledger_appended += 1
        return True

    async def extend(self, account: Account, allowance: Allowance, hold: Hold, pico: int) -> str:
        budgets = zip(
            account.spend_keys(hold.period),
            account.limit_keys(),
            account.hold_keys(),
            (allowance.tenant_pico, allowance.key_pico),
            ("tenant", "key"),
            strict=True,
        )
        for spend_key, limit_key, held_key, default, name in budgets:
            limit = self.limits.get(limit_key, default)
            others = sum(p for m, (_, p) in self.held.get(held_key, {}).items() if m != hold.member)
            if limit is not None and self.counters.get(spend_key, 0) + others + pico > limit:
                return name
        await self.release(account, hold)
        grown = replace(hold, pico=pico)
        for held_key in account.hold_keys():
            self.held.setdefault(held_key, {})[grown.member] = (time.time() + HOLD_S, pico)
        pending = Pending.of(account, grown)
        self.pending[pending.field] = pending
        return ""

    async def release(self, account: Account, hold: Hold) -> None:
        for held_key in account.hold_keys():
            self.held.get(held_key, {}).pop(hold.member, None)
        self.pending.pop(pending_field(account, hold.request_id), None)

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        tenant_spend, key_spend = account.spend_keys(period)
        return self.counters.get(tenant_spend, 0), self.counters.get(key_spend, 0)

    async def heartbeat(self, router: str, ttl_s: float) -> None:
        return None

    async def held_pico(self, account: Account) -> tuple[int, int]:
        now = time.time()
        tenant, key = [self.held.get(k, {}).values() for k in account.hold_keys()]
        return sum(p for expiry, p in tenant if expiry > now), sum(p for expiry, p in key if expiry > now)

    async def limit_overrides(self) -> dict[tuple[str, str], int]:
        return {_limit_subject(name): pico for name, pico in self.limits.items()}

    async def set_limit(self, scope: str, name: str, pico: int | None) -> None:
        if pico is None:
            self.limits.pop(f"{LIMIT_PREFIX}{scope}:{name}", None)
        else:
            self.limits[f"{LIMIT_PREFIX}{scope}:{name}"] = pico

    async def reconcile(self, router: str, lease_s: float, stale_s: float) -> int:
        return 0

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _held_sum(members: list[Any]) -> int:
    """Hold members are '<pico>:<request id>'."""
    return sum(int((m.decode() if isinstance(m, bytes) else m).split(":", 1)[0]) for m in members)


def _limit_subject(name: str) -> tuple[str, str]:
    scope, _, subject = name[len(LIMIT_PREFIX) :].partition(":")
    return scope, subject


def _remember(seen: dict[str, None], key: str, cap: int) -> None:
    seen[key] = None
    if len(seen) > cap:
        del seen[next(iter(seen))]  # the oldest: Redis would have expired it first too


def open_store(redis_url: str | None, request_id_ttl_s: int = REQUEST_ID_TTL_S) -> Store:
    return RedisStore(redis_url, request_id_ttl_s) if redis_url else MemoryStore()
