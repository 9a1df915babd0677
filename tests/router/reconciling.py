"""The reconciler's rounds as the upkeep runs them, several a lease: each keeps the lease, and a round after it lapsed
starts afresh the records of the routers seen missing (RedisStore.reconcile)."""

from __future__ import annotations

from services.router.store import RedisStore
from tests.waiting import eventually


async def settled_once_dead(store: RedisStore, router: str, lease_s: float, stale_s: float) -> int:
    """How many pending charges the first round to settle any settles: once the routers seen missing are taken for
    dead, a lease after."""
    settled = 0

    async def swept() -> int:
        nonlocal settled
        settled = await store.reconcile(router, lease_s, stale_s)
        return settled

    await eventually(swept, "the routers seen missing taken for dead")
    return settled
