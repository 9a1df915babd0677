"""Who holds the reconciler's lease, as its key names them, read as lua.LEASE reads it: from the last holder's name on
(every version since the bare name's writes it beside the key). "<router> +<outlives ms> <until>" from this version on,
held while its PTTL exceeds what it outlives the lease by; "<router> <until, the money's Unix ms>" from the version just
before; anything else a bare name, a version before's, held until its key lapses."""

from __future__ import annotations

import re
from typing import Any

from services.router.store.clock import money_now
from services.router.store.keys import LEASE, LEASE_HOLDER

# The key, its PTTL and its last holder read at one instant: a lease taken between two reads would be judged by
# another's PTTL.
READ_WITH_PTTL = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}"


async def lease_holder(client: Any) -> str | None:
    """The router holding the reconciler's lease now, None when none does (its key gone, or its lease past)."""
    held, pttl, last = await client.eval(READ_WITH_PTTL, 2, LEASE, LEASE_HOLDER)
    if not held:
        return None
    text, name = held.decode(), (last or b"").decode()
    after = text[len(name) + 1 :] if last is not None and text.startswith(name + " ") else ""
    if outlives := re.fullmatch(r"\+(\d+) \d+", after):
        return name if pttl > int(outlives[1]) else None
    if re.fullmatch(r"\d+", after):
        return name if int(after) > money_now() * 1000 else None  # the version just before's
    return text  # a bare name: held until its key lapses
