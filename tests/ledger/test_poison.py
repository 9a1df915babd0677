"""Ledger entries the SQL sink cannot copy as rows (an unreadable record; one the database refuses, a value out of
its range; one that is no charge the table can hold) are kept whole in the ledger_rejected table, with why, and
counted, before the sink acknowledges them: `trim --copied-only` then deletes only entries the SQL ledger has, as a
row or kept whole. The sink acknowledged them after a log line, and the trim deleted charges that were never
copied. Real Redis streams; the real table on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, MemorySource, RedisSource, stream_entry
from services.router import ledger
from services.router.store import PICO, MemoryStore, ledger_key

GROUP = "test-poison-sink"  # its own group: a router's sink in this test session may read the same streams
METRIC = "llmrouter_router_ledger_rejected_total"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = connect(redis_url)
    yield made
    await made.aclose()


def rejected_count() -> float:
    return REGISTRY.get_sample_value(METRIC) or 0.0


async def test_entries_the_sink_cannot_copy_are_kept_whole_counted_and_only_then_trimmed(
    client: Any, ledger_db: LedgerDB
) -> None:
    old_ms = int((time.time() - 100 * 86400) * 1000)
    huge = str(Decimal(2**70) / PICO)  # more pico-dollars than a BIGINT holds: the database refuses the row
    written = {
        f"{old_ms}-0": json.dumps({"request_id": "ok", "tenant": "t", "cost_usd": "0.1"}),
        f"{old_ms}-1": "not json",
        f"{old_ms}-2": json.dumps({"request_id": "huge", "tenant": "t", "cost_usd": huge}),
        f"{old_ms}-3": json.dumps({"request_id": "bad", "tenant": "t", "cost_usd": "a lot"}),
        f"{old_ms}-4": "[1, 2]",
    }
    stream = ledger_key(4)
    for entry_id, text in written.items():
        await client.xadd(stream, {"record": text}, id=entry_id)
    before = rejected_count()

    await LedgerSink(RedisSource(client, "s", group=GROUP), ledger_db).drain()

    assert [r.get("request_id") for r in await ledger_db.rows()] == ["ok"]
    kept = {entry: (record, error) for entry, record, error in await ledger_db.rejected()}
    poison = [f"{old_ms}-{i}" for i in range(1, 5)]
    assert sorted(kept) == sorted(stream_entry(stream, entry_id) for entry_id in poison)
    for entry_id in poison:  # each kept as it was read (an unreadable one as its text), with why it is not a row
        record, error = kept[stream_entry(stream, entry_id)]
        text = written[entry_id]
        assert json.loads(record) == (json.loads(text) if text.startswith("{") else text)
        assert error
    assert rejected_count() - before == 4
    assert (await client.xpending(stream, GROUP))["pending"] == 0

    # Delivered again (as to a sink that stopped before its ack), a rejected entry is kept once and counted once.
    await client.xgroup_setid(stream, GROUP, id="0")
    await LedgerSink(RedisSource(client, "s", group=GROUP), ledger_db).drain()
    assert len(await ledger_db.rejected()) == 4
    assert rejected_count() - before == 4

    # Every entry the trim deletes is in the SQL ledger, as a row or kept whole.
    assert await ledger.trim_copied(client, retention_days=90, group=GROUP) == (5, [])
    assert await client.xlen(stream) == 0


async def test_an_in_process_record_that_is_no_charge_is_kept_whole(ledger_db: LedgerDB) -> None:
    store = MemoryStore()
    store.ledger.append({"request_id": "bad", "tenant": "t", "cost_usd": "a lot"})
    store.ledger_appended += 1
    await LedgerSink(MemorySource(store), ledger_db, block_s=0.01).drain()
    [(_, record, error)] = await ledger_db.rejected()
    assert json.loads(record) == {"request_id": "bad", "tenant": "t", "cost_usd": "a lot"}
    assert error
