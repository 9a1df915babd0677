"""Start-up check of the money Redis: a store that may evict keys can drop a spend counter or a hold, and a
budget silently resets; without persistence a restart loses them."""

from __future__ import annotations

import logging

log = logging.getLogger("llmrouter.router")


async def check_money_redis(url: str, allow_eviction: bool, cache_url: str | None = None) -> None:
    """Exit with a clear message when the money Redis cannot be reached, may evict, or also serves the cache;
    warn when AOF is off."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        memory = await client.info("memory")
        persistence = await client.info("persistence")
        server = await client.info("server")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        reason = type(exc).__name__
        raise SystemExit(f"router: the money store (ROUTER_REDIS_URL) cannot be reached: {reason}") from None
    finally:
        await client.aclose()
    if cache_url and await _server_id(cache_url) == server.get("run_id"):
        # maxmemory and its policy are per server, whatever the database: under noeviction the cache's fill would
        # make the money store refuse admissions (full), and an evicting policy would drop money keys.
        raise SystemExit(
            "router: ROUTER_CACHE_REDIS_URL names the same Redis server as ROUTER_REDIS_URL (the money store): "
            "the response cache needs a Redis of its own (maxmemory-policy allkeys-lru), or leave it unset for "
            "an in-process cache."
        )
    policy = str(memory.get("maxmemory_policy", ""))
    if policy != "noeviction":
        message = (
            f"router: the money store (ROUTER_REDIS_URL) has maxmemory-policy {policy!r}: it may evict spend "
            "counters, holds and request ids, and budgets would reset. Set maxmemory-policy noeviction (the "
            "response cache belongs on ROUTER_CACHE_REDIS_URL), or for development only "
            "ROUTER_ALLOW_EVICTING_MONEY_STORE=true."
        )
        if not allow_eviction:
            raise SystemExit(message)
        log.warning(message)
    if not int(persistence.get("aof_enabled", 0)):
        log.warning("the money store has AOF off: a Redis restart loses the charges since its last snapshot")


async def _server_id(url: str) -> str | None:
    """The run id of the Redis server at `url`, or None when it cannot be asked (a cache that fails is bypassed)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return str((await client.info("server")).get("run_id"))
    except (redis.RedisError, OSError):
        return None
    finally:
        await client.aclose()
