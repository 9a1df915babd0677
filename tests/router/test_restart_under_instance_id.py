"""A router restarted under the same ROUTER_INSTANCE_ID (a pod's name, which a container restart keeps): the pending
charges its previous process left were its own to the reconciler, never a dead router's, and waited
ROUTER_PENDING_STALE_S (an hour). Each process names itself by the id and a suffix of its own (settings.router_name):
the previous one is taken for dead once its heartbeat lapses, its charges settled at their holds. Real Redis, the real
admission and upkeep."""

from __future__ import annotations

from services.router import admission
from services.router.settings import RouterSettings
from services.router.store import AccountKeys, RedisStore
from services.router.upkeep import Upkeep
from tests.router.test_admission import ACCOUNT, REGISTRY, request, routed, scratch_outbox
from tests.waiting import eventually

TTL_S = 0.3  # the heartbeat TTL, and the reconciler's lease
STALE_S = 3600.0


def pod(name: str) -> RouterSettings:
    """A router process's settings, its instance id set by the operator."""
    return RouterSettings(instance_id=name, min_output_tokens=16, default_quality_target=0.8)


async def test_a_router_restarted_under_its_instance_id_settles_what_its_previous_process_left(redis_url: str) -> None:
    previous, restarted = RedisStore(redis_url), RedisStore(redis_url)
    try:
        first = pod("router-0")
        await Upkeep(previous, scratch_outbox(), first.router_name, TTL_S, TTL_S, STALE_S).tick()
        gate, r = await routed(request(), admission.Admission(first, REGISTRY, previous, scratch_outbox()))
        await gate.admit(r)
        assert r.hold is not None
        # The process killed (no charge, no more beats); the container started again under the same id.
        second = pod("router-0")
        upkeep = Upkeep(restarted, scratch_outbox(), second.router_name, TTL_S, TTL_S, STALE_S)
        keys = AccountKeys.of(ACCOUNT)

        async def settled() -> bool:
            await upkeep.tick()
            return not await restarted.redis.hlen(keys.pending)

        await eventually(settled, "the previous process's pending charge settled", timeout_s=10)
        assert await restarted.redis.xlen(keys.ledger) == 1
        assert await restarted.spent(ACCOUNT, r.hold.period) == (r.hold.pico, r.hold.pico)  # at its hold, once
    finally:
        for store in (previous, restarted):
            await store.close()
