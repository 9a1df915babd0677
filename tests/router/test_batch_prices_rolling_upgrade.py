"""A provider batch line this router admits keeps its admitted batch prices readable by a router of the version before
(c7d916a, which knew no cache prices), as in a rolling upgrade: any router collects any line, and that version charges
a line at its admitted prices only when it reads them, else at the batch prices of its collect's registry (a price
changed within the provider's window then changed what the line costs). A batch line's cache prices are its batch
input price (ModelSpec.at_batch_price), which a value of that version's form says already. The router's servicer over
Redis, a real providers gRPC server (a Batch API), and the version before's store code run on the same Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from llmrouter.auth import acting_as
from services.router.servicer import RouterServicer
from services.router.store import Prices, RedisStore
from tests.router.old_version import checkout, run
from tests.router.servicer_kit import router_servicer
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider, send_line

BEFORE = "c7d916a"
OLD_PRICES = """
import asyncio, sys
from services.router.store import Account, RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        pending = await store.pending_charge(Account(sys.argv[2], sys.argv[3]), sys.argv[4])
        print(None if pending.prices is None else " ".join(map(str, pending.prices)))
    finally:
        await store.close()
asyncio.run(main())
"""


@pytest.fixture
async def router(redis_store: RedisStore, tmp_path: Path) -> AsyncIterator[tuple[RouterServicer, RedisStore]]:
    async with router_servicer(tmp_path, redis_store, BatchProvider(), REGISTRY) as servicer:
        yield servicer, redis_store


async def test_a_router_of_the_version_before_reads_the_batch_prices_a_line_was_admitted_at(
    router: tuple[RouterServicer, RedisStore], redis_url: str, tmp_path: Path
) -> None:
    servicer, store = router
    with acting_as(TENANT_CALLER):
        sent = await send_line(servicer)
    assert sent.deferred
    batch_in, batch_out = Decimal("2.50"), Decimal("7.50")  # the strong model's batch prices
    pending = await store.pending_charge(ACCOUNT, LINE.request_id)
    assert pending is not None and pending.prices == Prices(batch_in, batch_out, batch_in, batch_in)
    (old_tree := tmp_path / "old").mkdir()
    checkout(BEFORE, old_tree)
    read = await run(old_tree, OLD_PRICES, redis_url, ACCOUNT.tenant, ACCOUNT.key, LINE.request_id)
    assert read == f"{batch_in} {batch_out}"  # not None: its collect charges the line at them
