"""Who holds the reconciler's lease, as its key names them (lua.LEASE: "<router> <until, the money's Unix ms>"
from this version on, a bare name from a version before's script)."""

from __future__ import annotations

from typing import Any

from services.router.store.clock import money_now
from services.router.store.keys import LEASE


async def lease_holder(client: Any) -> str | None:
    """The router holding the reconciler's lease now, None when none does (its key gone, or its lease past)."""
    held = await client.get(LEASE)
    if held is None:
        return None
    name, _, until = held.decode().rpartition(" ")
    if not until.isdigit():
        return held.decode()  # a version before's: held until its key lapses
    return name if int(until) > money_now() * 1000 else None
