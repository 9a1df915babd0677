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

import psycopg
import pytest

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB, LedgerUnavailable
from services.ledger.sink import LedgerSink, RedisSource, stream_entry
from services.router.store import ledger_key

GROUP = "test-oversized-ids-sink"  # its own group: a router's sink in this test session may read the same streams
# Text that does not compress (PostgreSQL compresses a long index row first: a repeated one would fit): 3 KB, past a
# btree row's bound (refused by nbtree), and 10 KB, past any index row's (refused as the row is formed).
_RNG = random.Random(7)
OVERSIZED = "".join(chr(_RNG.randrange(0x4E00, 0x9FFF)) for _ in range(3500))
PAST_BTREE = "".join(chr(_RNG.randrange(0x4E00, 0x9FFF)) for _ in range(1000))
# The server refusing every new transaction id near a wraparound (until a VACUUM), with the same program-limit
# SQLSTATE: a trigger refuses the rows' inserts so, while ledger_rejected takes writes (the VACUUM done between them).
REFUSE_AS_AT_WRAPAROUND = """
CREATE FUNCTION refuse_as_at_wraparound() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  RAISE EXCEPTION 'database is not accepting commands that assign new transaction IDs to avoid wraparound data loss'
    USING ERRCODE = 'program_limit_exceeded';
END $$;
CREATE TRIGGER refuse_as_at_wraparound BEFORE INSERT ON requests
  FOR EACH ROW EXECUTE FUNCTION refuse_as_at_wraparound();
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = connect(redis_url)
    yield made
    await made.aclose()


@pytest.mark.parametrize("text", [PAST_BTREE, OVERSIZED], ids=["3KB", "10KB"])
@pytest.mark.parametrize("field", ["tenant", "request_id"])
async def test_an_entry_whose_ids_the_index_cannot_hold_is_kept_whole_and_the_rest_copied(
    client: Any, postgres: str, field: str, text: str
) -> None:
    oversized = {"tenant": "t", "request_id": "r-long", "cost_usd": "0.1"} | {field: text}
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


async def test_a_program_limit_of_the_servers_own_state_rejects_no_row(client: Any, postgres: str) -> None:
    """A program-limit refusal that is not the row's (the server near a wraparound) keeps the batch for a later round,
    as an outage does: no charge filed in ledger_rejected, where the restore repair (LedgerDB.iter_charges) and the
    Budgets never read it, nor acknowledged."""
    stream = ledger_key(2)
    for request_id in ("r1", "r2"):
        await client.xadd(stream, {"record": json.dumps({"tenant": "t", "request_id": request_id, "cost_usd": "0.1"})})
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(REFUSE_AS_AT_WRAPAROUND)
    db = LedgerDB(dsn=postgres)
    try:
        sink = LedgerSink(RedisSource(client, "s", group=GROUP), db)
        with pytest.raises(LedgerUnavailable):
            await sink.step(block_s=0.001)

        assert await db.rejected() == []
        assert (await client.xpending(stream, GROUP))["pending"] == 2
        with psycopg.connect(postgres, autocommit=True) as admin:  # the VACUUM done: ids are given again
            admin.execute("DROP TRIGGER refuse_as_at_wraparound ON requests")
        await sink.drain()
        assert sorted(r.get("request_id") for r in await db.rows()) == ["r1", "r2"]
        assert await db.rejected() == []
    finally:
        db.close()
