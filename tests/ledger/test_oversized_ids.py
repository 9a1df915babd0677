"""A ledger entry whose tenant or request id is too long for PostgreSQL's primary key index (a btree row holds about
2.7 KB: ids of 10 KB, which no router of this version writes, its ids being bounded at 256 characters; a version
before, or the stream edited) is kept whole in ledger_rejected, as any value the database refuses is, and the entries
after it are copied. PostgreSQL refuses such a row with a program-limit error, which psycopg classes as an
OperationalError: the sink took it for the database being out of reach, and retried the batch for ever, copying
nothing more. The real PostgreSQL server, real Redis streams."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource, stream_entry
from services.router.store import ledger_key

GROUP = "test-oversized-ids-sink"  # its own group: a router's sink in this test session may read the same streams
# 10 KB of text that does not compress (PostgreSQL compresses a long index row first: a repeated one would fit).
_RNG = random.Random(7)
OVERSIZED = "".join(chr(_RNG.randrange(0x4E00, 0x9FFF)) for _ in range(3500))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = connect(redis_url)
    yield made
    await made.aclose()


@pytest.mark.parametrize("field", ["tenant", "request_id"])
async def test_an_entry_whose_ids_the_index_cannot_hold_is_kept_whole_and_the_rest_copied(
    client: Any, postgres: str, field: str
) -> None:
    oversized = {"tenant": "t", "request_id": "r-long", "cost_usd": "0.1"} | {field: OVERSIZED}
    stream = ledger_key(2)
    await client.xadd(stream, {"record": json.dumps({"tenant": "t", "request_id": "before", "cost_usd": "0.1"})})
    long_entry = await client.xadd(stream, {"record": json.dumps(oversized)})
    await client.xadd(stream, {"record": json.dumps({"tenant": "t", "request_id": "after", "cost_usd": "0.1"})})
    db = LedgerDB(dsn=postgres)
    try:
        await LedgerSink(RedisSource(client, "s", group=GROUP), db).drain()

        assert sorted(r.get("request_id") for r in await db.rows()) == ["after", "before"]
        ((entry, record, error),) = await db.rejected()
        assert entry == stream_entry(stream, long_entry.decode()) and json.loads(record) == oversized
        assert error.startswith("refused by the database")
        assert (await client.xpending(stream, GROUP))["pending"] == 0
    finally:
        db.close()
