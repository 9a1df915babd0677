"""A budget change the store did not confirm may still have taken effect: Redis set the limit and its reply was lost
(or, on a Redis Cluster, a key's limit, written shard by shard, some took it before the call failed). SetBudget failed
and the router recorded nothing, while admission held requests to the new limit: a change with no line naming who
made it or what it was before. Such a change is now a warning of its own, with the same fields but the limit before
(the store's answer, lost). A change is recorded before any shard takes it (store/limits.py): its record's reply
lost, no shard has it yet, and a router's upkeep gives it to them. Real Redis, behind a proxy that loses the reply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.ledger.db import LedgerDB
from services.router.operations import ALL, Operations
from services.router.store import Allowance, StoreUnavailable
from services.router.store.keys import LIMIT_CHANGES, limits_key, shard_of
from services.router.store.limits import LimitUnconfirmed
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import store_on


def recorded(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str, str, str]]:
    return [
        (r.levelname, r.getMessage(), r.by, r.budget_name, r.limit_usd)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("budget limit set")
    ]


UNCONFIRMED = [("WARNING", "budget limit set unconfirmed", "ops (key 0123)", "acme", "5")]


# The command whose reply is lost: the shard's write of the limit (Redis has set it), or the change's record, before
# any shard's write (recorded as unconfirmed in the store too: a router's upkeep sets it then).
LOST = {"its write": limits_key(shard_of("acme")).encode(), "its record": LIMIT_CHANGES.encode()}


@pytest.mark.parametrize("lost_reply", LOST)
@pytest.mark.parametrize("ended_by", ["the store lost", "the call cancelled"])
async def test_a_change_whose_reply_never_came_is_recorded_as_unconfirmed(
    proxy: LossyProxy,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    ended_by: str,
    lost_reply: str,
) -> None:
    """The store out of reach once it has set the limit, or the call cancelled then (its caller gone, its deadline
    passed)."""
    caplog.set_level("INFO", logger="llmrouter.router")
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    direct = redis.from_url(redis_url)
    try:
        async with store_on(proxy.url_for(redis_url)) as store:
            operations = Operations(store, Allowance("day"), db)
            # Its scripts loaded first: on a Redis that never ran them, the held reply would be NOSCRIPT's, not run.
            await operations.set_budget(ALL, "tenant", "warm-up", "1", by="ops (key 0123)")
            caplog.clear()
            lost = proxy.hold_reply_to(LOST[lost_reply])
            changing = asyncio.create_task(operations.set_budget(ALL, "tenant", "acme", "5", by="ops (key 0123)"))
            await lost.arrived.wait()  # Redis has run it; the router has not heard so
            if ended_by == "the store lost":
                proxy.go_down()
            else:
                changing.cancel()
            with pytest.raises((StoreUnavailable, LimitUnconfirmed, asyncio.CancelledError)):
                await changing
            lost.released.set()
        if lost_reply == "its record":
            async with store_on(redis_url) as upkeep_store:
                assert await upkeep_store.finish_limit_changes() == 1  # as a router's upkeep round does
        assert await direct.hget(limits_key(shard_of("acme")), "tenant:acme") == b"5000000000000"  # in effect
        assert recorded(caplog) == UNCONFIRMED
    finally:
        await direct.aclose()
        db.close()
