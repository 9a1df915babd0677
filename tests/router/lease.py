"""Who holds the reconciler's lease, as its key names them (lua.LEASE: "<router> +<outlives ms> <until>" from this
version on, held while its PTTL exceeds what it outlives the lease by; "<router> <until, the money's Unix ms>" from the
version just before; a bare name from a version before's script)."""

from __future__ import annotations

from typing import Any

from services.router.store.clock import money_now
from services.router.store.keys import LEASE

# The key and its PTTL read at one instant: a lease taken between two reads would be judged by another's PTTL.
READ_WITH_PTTL = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"


async def lease_holder(client: Any) -> str | None:
    """The router holding the reconciler's lease now, None when none does (its key gone, or its lease past)."""
    held, pttl = await client.eval(READ_WITH_PTTL, 1, LEASE)
    if not held:
        return None
    head, _, until = held.decode().rpartition(" ")
    if not until.isdigit():
        return held.decode()  # a version before's: held until its key lapses
    name, _, outlives = head.rpartition(" +")
    if outlives.isdigit():
        return name if pttl > int(outlives) else None
    return head if int(until) > money_now() * 1000 else None  # the version just before's
