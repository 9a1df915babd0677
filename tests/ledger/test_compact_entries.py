"""Ledger entries of both forms (services/router/store/ledger_entry.py) read the same everywhere: an entry as the
routers of the versions before wrote it (the record as built) and one as the store writes it now (compact), side by
side in the real Redis streams as during a rolling upgrade, are copied by the SQL sink into the same row, on SQLite and
PostgreSQL; a row an older router's sink copied from a compact entry (its candidates as lists) exports as the others
do; and the stream's own JSONL export gives every record as built."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger import export
from services.ledger.db import COLUMNS, LedgerDB, Row, row_from_record
from services.ledger.sink import LedgerSink, RedisSource
from services.router import ledger, policy
from services.router.store import SHARDS, Account, Hold, RedisStore, ledger_key, to_pico
from services.router.store.ledger_entry import compact

GROUP = "test-compact-sink"  # its own: a router's sink still running in this session reads the same streams
ACCOUNT = Account("acme", "k-acme")
CANDIDATES = [
    {"model": "smollm2-135m", "predicted_quality": 0.6112, "estimated_cost_usd": "0", "eligible": True},
    {"model": "gpt-4o-mini", "predicted_quality": 0.8505, "estimated_cost_usd": "0.0000597", "eligible": True},
    {"model": "llama-3.1-8b-instant", "predicted_quality": 0.7, "estimated_cost_usd": "0.0000247", "eligible": False},
    {"model": "gpt-4o", "predicted_quality": 0.9, "estimated_cost_usd": "0.003035", "eligible": False},
]
REASONS = ["", "", policy.UNAVAILABLE, "latency SLO 15000 ms over max_latency_ms 9000"]


def charge_record(request_id: str) -> dict[str, Any]:
    """A record as services/router/charging.py builds it (every field), its cost odd to the pico-dollar."""
    return {
        "request_id": request_id,
        "ts": 1_780_000_000.5,
        "tenant": ACCOUNT.tenant,
        "key": ACCOUNT.key,
        "period": "all",  # a total budget's: a day's is charged to the day it lands in (model.landing_period)
        "model": "gpt-4o-mini",
        "provider": "openai",
        "input_tokens": 812,
        "output_tokens": 245,
        "tokens_estimated": False,
        "cost_usd": "0.000268812345",
        "generations": [{"model": "gpt-4o-mini", "input_tokens": 812, "output_tokens": 245}],
        "owed_usd": "0",
        "baseline_cost_usd": "0.00448",
        "latency_ms": 1843,
        "session_id": "",
        "reason": "cheapest_near_best",
        "reason_detail": "cheapest model predicted within 0.85 of the best (gpt-4o 0.90)",
        "candidates": [{**c, "excluded_because": r} for c, r in zip(CANDIDATES, REASONS, strict=True)],
        "fallback": False,
        "error": "",
        "cache_hit": False,
        "escalated": True,
        "escalation_signal": "verifier",
        "retries": 1,
        "outcome": "ok",
    }


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = connect(redis_url)
    yield made
    await made.aclose()


def without_its_entry(row: Row) -> dict[str, Any]:
    """A row's values but those naming the request and the entry it was copied from."""
    values = row.as_dict()
    return {k: v for k, v in values.items() if k not in ("request_id", "ledger_entry")}


def exported_both_ways(rows: list[Row]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    jsonl, text = io.StringIO(), io.StringIO()
    export.write(rows, jsonl, "jsonl")
    export.write(rows, text, "csv")
    lines = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    return lines, list(csv.DictReader(io.StringIO(text.getvalue())))


async def test_old_and_compact_entries_become_the_same_row_and_export(
    redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    store = RedisStore(redis_url)
    try:
        # The compact one through the store's real charge path; the old one as the version before appended it.
        now = charge_record("now")
        await store.charge(ACCOUNT, Hold("now", 0, "all"), to_pico(Decimal(now["cost_usd"])), now)
        await client.xadd(ledger_key(0), {"record": json.dumps(charge_record("before"))})
    finally:
        await store.close()
    texts = [fields[b"record"].decode() for s in range(SHARDS) for _, fields in await client.xrange(ledger_key(s))]
    assert sorted(texts, key=len) == [compact(now), json.dumps(charge_record("before"))]

    await LedgerSink(RedisSource(client, "sink", group=GROUP), ledger_db).drain()
    rows = sorted(await ledger_db.rows(), key=lambda row: str(row.get("request_id")))
    assert [row.get("request_id") for row in rows] == ["before", "now"]
    assert without_its_entry(rows[0]) == without_its_entry(rows[1])
    assert json.loads(rows[1].get("candidates")) == charge_record("now")["candidates"]  # the table keeps dicts
    assert (rows[1].get("escalated"), rows[1].get("retries"), rows[1].get("cost_pico")) == (1, 1, 268_812_345)
    assert await ledger_db.rejected() == []

    jsonl, csv_rows = exported_both_ways(rows)
    assert jsonl[0]["candidates"] == jsonl[1]["candidates"] == charge_record("now")["candidates"]
    assert csv_rows[0]["candidates"] == csv_rows[1]["candidates"] == rows[0].get("candidates")


async def test_a_row_an_older_sink_copied_from_a_compact_entry_exports_as_the_others(ledger_db: LedgerDB) -> None:
    """During a rolling upgrade a router of the version before may copy a compact entry: its sink keeps the
    candidates it reads as they are, lists, in the row (and takes the flags left out as their defaults)."""
    old_sinks_row = list(row_from_record(charge_record("copied"), "{m0.0}:ledger 1780000000000-0"))
    old_sinks_row[COLUMNS.index("candidates")] = json.dumps(json.loads(compact(charge_record("x")))["candidates"])
    await ledger_db.insert([tuple(old_sinks_row), row_from_record(charge_record("own"), "{m0.0}:ledger 1-0")])
    rows = sorted(await ledger_db.rows(), key=lambda row: str(row.get("request_id")))
    assert isinstance(json.loads(rows[0].get("candidates"))[0], list)  # as the older sink left it

    jsonl, csv_rows = exported_both_ways(rows)
    assert jsonl[0]["candidates"] == jsonl[1]["candidates"] == charge_record("own")["candidates"]
    assert csv_rows[0]["candidates"] == csv_rows[1]["candidates"] == rows[1].get("candidates")


async def test_the_streams_export_gives_every_record_as_built(redis_url: str, client: Any, tmp_path: Path) -> None:
    await client.xadd(ledger_key(1), {"record": json.dumps(charge_record("before"))})
    await client.xadd(ledger_key(1), {"record": compact(charge_record("now"))})
    await client.xadd(ledger_key(1), {"record": "[1, 2]"})  # no record at all: exported as it is all the same
    await client.xadd(ledger_key(1), {"record": '{"candidates": [[1]]}'})  # nor a compact one
    out = tmp_path / "ledger.jsonl"
    assert await ledger.export(client, out) == 4
    records = [json.loads(line)["record"] for line in out.read_text().splitlines()]
    assert records == [charge_record("before"), charge_record("now"), [1, 2], {"candidates": [[1]]}]
