"""Fixtures shared by the router's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.router.store import MemoryStore, RedisStore, Store


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    redis_store = RedisStore(redis_url)
    yield redis_store
    await redis_store.close()
