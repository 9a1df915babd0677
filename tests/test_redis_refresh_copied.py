"""llmrouter/redis_connect.py's Cluster overrides redis-py's private `_refresh_topology` with a copy changed in one
place (the default node: the first master to answer). pyproject asks only for redis>=8, so a redis-py whose method
differs from the one copied fails here, to be read against the copy before it is used, never silently undone."""

from __future__ import annotations

import hashlib
import inspect

from redis.asyncio.cluster import RedisCluster

# SHA-256 of the method's source in redis-py 8.2.0, the one Cluster._refresh_topology copies.
COPIED = "d441fbbcc4bce615710aab5bf68825af6dade8146a2ace134b5b599c3db7aba3"


def test_redis_py_refreshes_the_cluster_layout_as_the_override_copies() -> None:
    source = inspect.getsource(RedisCluster._refresh_topology)
    assert hashlib.sha256(source.encode()).hexdigest() == COPIED, (
        "redis-py's RedisCluster._refresh_topology is not the one llmrouter.redis_connect.Cluster copies: "
        "bring the override in line with it, then record its digest here\n" + source
    )
