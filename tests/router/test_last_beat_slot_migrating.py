"""A router's heartbeat and its last beat (last_beats.py) are written and read together, one script on the GLOBAL slot's
master. While that slot migrates, a router's two keys may be on two masters, and the script is refused (TRYAGAIN) until
the move ends: its router's heartbeat would fail (the router failing closed) and the reconciler sweep nothing. So each
is done key by key as a version before did, the last beat dropped (it would date the router's lapse by an older beat)
and the router judged by sightings. Real Redis Cluster."""

from __future__ import annotations

from services.router.store import RedisStore
from services.router.store.keys import GLOBAL_SLOT, alive_key, last_beat_key
from tests.redis_servers import RedisCluster


async def test_a_router_beats_and_is_read_while_its_keys_are_split_by_a_migrating_slot(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    store = RedisStore(cluster_url)
    source = redis_cluster.owner(GLOBAL_SLOT)
    target = (source + 1) % len(redis_cluster.nodes)
    try:
        await store.heartbeat("router-a", 600)  # its last beat written beside its heartbeat
        redis_cluster.start_migrating(GLOBAL_SLOT, source, target)
        redis_cluster.migrate(source, target, alive_key("router-a"))  # its heartbeat moved, its last beat not yet

        await store.heartbeat("router-a", 600)
        on_either = redis_cluster.keys_in_slot(source, GLOBAL_SLOT) + redis_cluster.keys_in_slot(target, GLOBAL_SLOT)
        assert alive_key("router-a") in on_either and last_beat_key("router-a") not in on_either
        beats = await store._beats_read(["router-a", "router-b"])
        assert beats.alive == {"router-a": True, "router-b": False}
        assert beats.gone_s("router-b") is None  # judged by sightings
    finally:
        await store.close()
        redis_cluster.flush()
        redis_cluster.cancel_migrating(GLOBAL_SLOT)
    assert redis_cluster.owner(GLOBAL_SLOT) == source
