"""Checks of the money store. At start-up, of the money Redis: a store that may evict keys can drop a spend counter
or a hold, and a budget silently resets; without persistence a restart loses them. On demand, of its running hold
totals (`python -m services.router.money_check hold-totals`): each set's total against a scan of its members, which
admission trusts in their place (ROUTER_HOLD_TOTALS); `bump-hold-totals-epoch` distrusts every total kept so far,
each rebuilt from a scan when admission next reads it (README, Money: running hold totals, upgrades)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass

from pydantic import SecretStr
from redis.exceptions import RedisClusterException

from llmrouter.redis_connect import connect, each_primary
from llmrouter.settings import load_settings
from services.ledger.settings import LedgerSettings
from services.router.store import HoldsTotal, RedisStore, Store

log = logging.getLogger("llmrouter.router")


async def check_money_redis(
    url: str | SecretStr, allow_eviction: bool, cache_url: str | SecretStr | None = None
) -> None:
    """Exit with a clear message when the money Redis cannot be reached, may evict, or also serves the cache;
    warn when AOF is off. On a Redis Cluster every master is checked: one that evicts loses the budgets of the
    tenants it holds."""
    import redis.asyncio as redis

    client = connect(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        memory = await each_primary(client, "INFO", "memory")
        persistence = await each_primary(client, "INFO", "persistence")
        servers = await each_primary(client, "INFO", "server")
    except (redis.ConnectionError, redis.TimeoutError, redis.RedisError, RedisClusterException, OSError) as exc:
        reason = type(exc).__name__
        raise SystemExit(f"router: the money store (ROUTER_REDIS_URL) cannot be reached: {reason}") from None
    finally:
        await client.aclose()
    money_ids = {str(info.get("run_id")) for info in servers.values()}
    if cache_url and (await _server_ids(cache_url)) & money_ids:
        # maxmemory and its policy are per server, whatever the database: under noeviction the cache's fill would
        # make the money store refuse admissions (full), and an evicting policy would drop money keys.
        raise SystemExit(
            "router: ROUTER_CACHE_REDIS_URL names the same Redis server as ROUTER_REDIS_URL (the money store): "
            "the response cache needs a Redis of its own (maxmemory-policy allkeys-lru), or leave it unset for "
            "an in-process cache."
        )
    for node, info in memory.items():
        policy = str(info.get("maxmemory_policy", ""))
        if policy != "noeviction":
            where = "" if node == "server" else f" on master {node}"
            message = (
                f"router: the money store (ROUTER_REDIS_URL) has maxmemory-policy {policy!r}{where}: it may evict "
                "spend counters, holds and request ids, and budgets would reset. Set maxmemory-policy noeviction "
                "(the response cache belongs on ROUTER_CACHE_REDIS_URL), or for development only "
                "ROUTER_ALLOW_EVICTING_MONEY_STORE=true."
            )
            if not allow_eviction:
                raise SystemExit(message)
            log.warning(message)
    if not all(int(info.get("aof_enabled", 0)) for info in persistence.values()):
        log.warning("the money store has AOF off: a Redis restart loses the charges since its last snapshot")


async def _server_ids(url: str | SecretStr) -> set[str]:
    """The run ids of the Redis servers at `url` (every master of a cluster); none when they cannot be asked (a
    cache that fails is bypassed)."""
    import redis.asyncio as redis

    client = connect(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return {str(info.get("run_id")) for info in (await each_primary(client, "INFO", "server")).values()}
    except (redis.RedisError, RedisClusterException, OSError):
        return set()
    finally:
        await client.aclose()


@dataclass(frozen=True)
class HoldTotalsAudit:
    """Every holds set's running total against a scan of its members. `drifted`: a total trusted (of this epoch and
    of as many members as its set) that sums otherwise, a money error: admission counts its budget wrongly. `stale`:
    a total not trusted, rebuilt from a scan when admission next reads it (as after a bump of the epoch, or beside
    routers of the version before)."""

    checked: int
    drifted: list[HoldsTotal]
    stale: list[HoldsTotal]


async def audit_hold_totals(store: Store) -> HoldTotalsAudit:
    checked, drifted, stale = 0, [], []
    async for found in store.hold_totals():
        checked += 1
        if found.total is None:
            stale.append(found)
        elif found.total != found.scanned:
            drifted.append(found)
    return HoldTotalsAudit(checked, drifted, stale)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.router.money_check", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["hold-totals", "bump-hold-totals-epoch"])
    args = parser.parse_args(argv)
    settings = load_settings(LedgerSettings)  # its redis_url is the router's money store; no server settings
    if not settings.redis_url:
        print("ROUTER_REDIS_URL is not set: the in-process store's totals live in its router", file=sys.stderr)
        return 2
    store = RedisStore(settings.redis_url)
    try:
        if args.command == "bump-hold-totals-epoch":
            await store.bump_hold_totals_epoch()
            print("hold totals: epoch bumped; each is rebuilt from a scan when admission next reads it")
            return 0
        audit = await audit_hold_totals(store)
        older = await store.older_routers_alive()
    finally:
        await store.close()
    for found in audit.drifted:
        print(f"drifted: {found.holds} total {found.total} scanned {found.scanned}", file=sys.stderr)
    print(f"hold totals: {audit.checked} sets, {len(audit.drifted)} drifted, {len(audit.stale)} to be rebuilt")
    if older:  # their holds move no total: drift is their doing, a money error only for routers set to trust
        print(
            f"{older} live router(s) keep no hold totals (a version before them): routers on ROUTER_HOLD_TOTALS=auto "
            "count holds by a scan until they are gone, then rebuild every total; routers on trust count wrongly",
            file=sys.stderr,
        )
    return 1 if audit.drifted else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
