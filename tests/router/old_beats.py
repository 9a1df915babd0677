"""A heartbeat as a router of the version before the last beat wrote it: its key alone, no last beat (last_beats.py)."""

from __future__ import annotations

import time
from typing import Any

from services.router.store.keys import KEEPS_HOLD_TOTALS, alive_key


async def beat_as_the_version_before(client: Any, router: str, ttl_s: float) -> None:
    await client.set(alive_key(router), f"{time.time()} {KEEPS_HOLD_TOTALS}", px=int(ttl_s * 1000))
