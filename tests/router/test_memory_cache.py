"""The in-process response cache (no cache Redis) stays within its bounds in entries and in bytes."""

from __future__ import annotations

import pytest

from services.router.cache import MemoryCache


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> MemoryCache:
    monkeypatch.setattr(MemoryCache, "MAX_BYTES", 1000)
    monkeypatch.setattr(MemoryCache, "MAX_ENTRIES", 5)
    return MemoryCache()


async def test_large_answers_evict_the_oldest_to_stay_within_the_bytes(cache: MemoryCache) -> None:
    for i in range(4):
        await cache.set(f"k{i}", bytes(300), 60)
    assert cache.bytes <= 1000 and sum(len(v) for _, v in cache.entries.values()) == cache.bytes
    assert await cache.get("k0") is None and await cache.get("k3") == bytes(300)  # the oldest went


async def test_an_answer_larger_than_the_whole_cache_is_not_kept(cache: MemoryCache) -> None:
    await cache.set("small", b"x", 60)
    await cache.set("huge", bytes(1001), 60)
    assert await cache.get("huge") is None and await cache.get("small") == b"x"


async def test_setting_a_key_again_counts_its_bytes_once(cache: MemoryCache) -> None:
    for _ in range(10):
        await cache.set("same", bytes(400), 60)
    assert cache.bytes == 400 and len(cache.entries) == 1


async def test_past_the_entries_bound_the_oldest_goes(cache: MemoryCache) -> None:
    for i in range(7):
        await cache.set(f"k{i}", b"v", 60)
    assert len(cache.entries) == 5 and await cache.get("k1") is None and await cache.get("k6") == b"v"
