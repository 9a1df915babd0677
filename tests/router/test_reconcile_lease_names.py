"""The reconciler's lease key names its holder first ("<router> +<outlives ms> <until>"; the version just before's
"<router> <until>"; a version before's, the bare name), and a router's name may hold anything (ROUTER_INSTANCE_ID).
Read from its end, a name ending in " +<digits>" or " <digits>" was misread: the version just before's key of router
"rec +7" was taken for this version's key of router "rec" (which then took the live lease as its own, two reconcilers
at once, while another router waited for the key's PTTL rather than its until), and a bare name "old 7" for a lease
past at 7 ms (taken from its live holder). The key is now read from its last holder's name on. Real Redis; the older
versions' reconcilers run from their own commits."""

from __future__ import annotations

from pathlib import Path

from services.router.store import RedisStore
from services.router.store.keys import LEASE
from tests.router.lease import lease_holder
from tests.router.old_version import checkout, run
from tests.waiting import eventually

JUST_BEFORE = "5bad4f75"  # its key "<router> <until>", judged by its money clock; it keeps the last holder
BEFORE = "231b2e7b"  # its key the bare name, held until it lapses; it keeps no last holder
OLD_RECONCILE = """
import asyncio, sys
from services.router.store import RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        await store.reconcile(sys.argv[2], float(sys.argv[3]), 3600.0)
    finally:
        await store.close()
asyncio.run(main())
"""
LEASE_S = 30.0  # live throughout the test


async def test_a_name_ending_in_plus_digits_keeps_its_live_lease(redis_url: str, tmp_path: Path) -> None:
    """Router "rec +7" of the version just before holds the lease: router "rec" of this version does not take it."""
    tree = checkout(JUST_BEFORE, tmp_path)
    store = RedisStore(redis_url)
    try:
        await run(tree, OLD_RECONCILE, redis_url, "rec +7", str(LEASE_S))
        assert await lease_holder(store.redis) == "rec +7"
        assert await store.reconcile("rec", LEASE_S, 3600.0) == 0
        assert await store.reconcile("other", LEASE_S, 3600.0) == 0
        assert (await store.redis.get(LEASE)).startswith(b"rec +7 ")
        assert await lease_holder(store.redis) == "rec +7"
    finally:
        await store.close()


async def test_its_lease_past_by_until_is_taken_at_once(redis_url: str, tmp_path: Path) -> None:
    """Its until past, its key not gone (it outlives the lease by 5 s at least): another router takes it then, not
    once the key's PTTL is down to the 7 ms its name seemed to say."""
    tree = checkout(JUST_BEFORE, tmp_path)
    store = RedisStore(redis_url)
    try:
        await run(tree, OLD_RECONCILE, redis_url, "rec +7", "0.1")

        async def lease_past() -> bool:
            return await lease_holder(store.redis) is None

        await eventually(lease_past, "the version just before's lease past by its until")
        assert await store.redis.pttl(LEASE) > 1000  # its key still there, for seconds
        assert await store.reconcile("other", LEASE_S, 3600.0) == 0
        assert await lease_holder(store.redis) == "other"
    finally:
        await store.close()


async def test_a_bare_name_ending_in_digits_is_held_until_its_key_lapses(redis_url: str, tmp_path: Path) -> None:
    """Router "old 7" of a version before, its key its bare name: not a lease that ended at 7 ms."""
    tree = checkout(BEFORE, tmp_path)
    store = RedisStore(redis_url)
    try:
        await run(tree, OLD_RECONCILE, redis_url, "old 7", str(LEASE_S))
        assert await lease_holder(store.redis) == "old 7"
        assert await store.reconcile("rec", LEASE_S, 3600.0) == 0
        assert await store.redis.get(LEASE) == b"old 7"
    finally:
        await store.close()


async def test_a_bare_name_sharing_the_last_holders_first_letters_is_held(redis_url: str, tmp_path: Path) -> None:
    """After a rollback: router "rec" of this version held the lease last, then router "rec-9" of a version before
    (which keeps no last holder) took it, its key gone: "rec" reads a bare name, not its own key (the last holder's name
    is followed by a blank in a key of its own). A bare "rec 9" would be misread (README, the lease)."""
    tree = checkout(BEFORE, tmp_path)
    store = RedisStore(redis_url)
    try:
        assert await store.reconcile("rec", LEASE_S, 3600.0) == 0
        await store.redis.delete(LEASE)  # as after a gap with no round of this version as long as the key outlives it
        await run(tree, OLD_RECONCILE, redis_url, "rec-9", str(LEASE_S))
        assert await store.reconcile("rec", LEASE_S, 3600.0) == 0
        assert await store.redis.get(LEASE) == b"rec-9"
        assert await lease_holder(store.redis) == "rec-9"
    finally:
        await store.close()


async def test_names_with_blanks_and_plus_digits_of_this_version(redis_url: str) -> None:
    """This version's own keys, whatever the names: held by their holder, renewed by it alone, taken once past."""
    holder, other = RedisStore(redis_url), RedisStore(redis_url)
    try:
        assert await holder.reconcile("pod +7 9", 0.1, 3600.0) == 0
        assert await lease_holder(holder.redis) == "pod +7 9"
        assert await other.reconcile("pod", 0.1, 3600.0) == 0
        assert (await holder.redis.get(LEASE)).startswith(b"pod +7 9 +")

        async def lease_past() -> bool:
            return await lease_holder(holder.redis) is None

        await eventually(lease_past, "the lease past")
        assert await other.reconcile("pod", 0.1, 3600.0) == 0
        assert await lease_holder(holder.redis) == "pod"
    finally:
        for store in (holder, other):
            await store.close()
