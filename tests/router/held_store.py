"""A real money store on Redis whose charges a test holds up: one charge override with a hook, for the tests that
need a slow, silent or cancellation-losing store, not a copy of the charge's signature in each."""

from __future__ import annotations

import asyncio
from typing import Any

from services.router.store import RedisStore


class ChargeHeldStore(RedisStore):
    """A real store whose every charge first waits on `held_up` (the test's hold-up); `charging` is set at the first."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.charging = asyncio.Event()

    async def held_up(self, first: bool) -> None:
        raise NotImplementedError

    async def charge(self, *args: Any, **kwargs: Any) -> bool:
        first = not self.charging.is_set()
        self.charging.set()
        await self.held_up(first)
        return await super().charge(*args, **kwargs)
