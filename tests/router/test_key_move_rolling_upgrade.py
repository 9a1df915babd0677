"""A key move made by the version before the key-moves tokens (895c0f7), whose key_move rebinds the key and writes no
token, during a rolling upgrade: this version's routers meet no token for it, and fall back on what a router remembers,
a binding for key_tenants.BOUND_S at most (README, *A key serves one tenant*). The new tenant is served at once (a
binding remembered for another tenant is read again); the old one until the minute is over, then refused. The same
fallback serves a move whose tokens were never written (it failed half-way) or a failover lost."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.router import key_tenants
from services.router.store import Account, RedisStore, period_id
from tests.router.old_version import checkout, run
from tests.router.servicer_kit import router_servicer
from tests.router.test_duplicate_across_keys import Answering
from tests.router.test_key_of_two_tenants import KEY, ask, call, refusal, refused_for_another_tenant, tenants

BEFORE = "895c0f7"  # the version before the key-moves tokens
OLD_KEY_MOVE = """
import asyncio, os, sys
os.environ["ROUTER_REDIS_URL"] = sys.argv[1]
from services.router import key_move
sys.exit(asyncio.run(key_move.main(sys.argv[2:])))
"""
OLD, NEW = tenants(same_shard=False)


class Clock:
    """key_tenants' monotonic clock, moved on at will: a router's minute passes without the test waiting it out."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr(key_tenants, "time", SimpleNamespace(monotonic=made.monotonic))
    return made


async def test_a_move_by_the_version_before_is_met_once_the_binding_remembered_is_a_minute_old(
    tmp_path: Path, redis_store: RedisStore, redis_url: str, clock: Clock
) -> None:
    (tmp_path / "old").mkdir()
    old_tree = checkout(BEFORE, tmp_path / "old")
    async with router_servicer(tmp_path, redis_store, Answering()) as servicer:
        await call(servicer, "Complete", ask(OLD, "r1"))  # the key bound to the old tenant, and remembered
        said = await run(old_tree, OLD_KEY_MOVE, redis_url, KEY, NEW)
        assert "within a minute" in said  # the version before's own words: no token written
        await call(servicer, "Complete", ask(OLD, "r2"))  # within the minute: remembered, no token met
        spent = await redis_store.spent(Account(OLD, KEY), period_id("day"))
        clock.ahead = key_tenants.BOUND_S
        refused = await refusal(servicer, "Complete", ask(OLD, "r3"))
        await call(servicer, "Complete", ask(NEW, "r4"))
    refused_for_another_tenant(refused, NEW)
    assert await redis_store.spent(Account(OLD, KEY), period_id("day")) == spent
