"""Ledger JSON nested past the parser's depth (100,000 `[` in a stream entry, the ledger_rejected table or a row, put
there by hand or by a hostile writer of the money Redis) is read as unreadable: the SQL sink keeps the entry whole in
ledger_rejected and counts it, ledger-spend reads it as no charge, the SQL trim deletes it, the stream trim exports it
as its text, and the SQL export stops naming the row. Before, json.loads raised RecursionError (no ValueError) in each
of them: the sink retried the same entries forever, and the others ended in a traceback. Real Redis; the real table
on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from llmrouter.redis_connect import connect
from services.ledger import export
from services.ledger.db import LedgerDB, Rejected, row_from_record
from services.ledger.sink import LedgerSink, RedisSource, stream_entry
from services.router import ledger
from services.router.store import ledger_key

GROUP = "test-deep-json-sink"  # its own group: a router's sink in this test session may read the same streams
DEEP = "[" * 100_000  # past the parser's recursion limit: RecursionError, not the ValueError of text that is no JSON
NEARLY = "[" * 900 + "]" * 900  # parses, but deep enough for what re-encodes it to fail
OLD_MS = int((time.time() - 100 * 86400) * 1000)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = connect(redis_url)
    yield made
    await made.aclose()


def rejected_count() -> float:
    return REGISTRY.get_sample_value("llmrouter_router_ledger_rejected_total") or 0.0


async def test_the_sink_keeps_deep_entries_whole_as_unreadable(client: Any, ledger_db: LedgerDB) -> None:
    nearly = '{"request_id":"nearly","tenant":"t","cost_usd":"0.1","candidates":' + NEARLY + "}"
    written = {
        f"{OLD_MS}-0": json.dumps({"request_id": "ok", "tenant": "t", "cost_usd": "0.1"}),
        f"{OLD_MS}-1": DEEP,
        f"{OLD_MS}-2": nearly,
    }
    stream = ledger_key(3)
    for entry_id, text in written.items():
        await client.xadd(stream, {"record": text}, id=entry_id)
    before = rejected_count()

    await LedgerSink(RedisSource(client, "s", group=GROUP), ledger_db).drain()

    assert [r.get("request_id") for r in await ledger_db.rows()] == ["ok"]
    kept = {entry: (json.loads(record), error) for entry, record, error in await ledger_db.rejected()}
    assert kept == {
        stream_entry(stream, f"{OLD_MS}-1"): (DEEP, "unreadable record"),
        stream_entry(stream, f"{OLD_MS}-2"): (nearly, "unreadable record"),
    }
    assert rejected_count() - before == 2
    assert (await client.xpending(stream, GROUP))["pending"] == 0


async def test_deep_rejected_records_read_as_no_charge_and_are_trimmed(ledger_db: LedgerDB) -> None:
    # As an older version kept them, or as edited by hand: the record column itself nested too deep.
    await ledger_db.reject([Rejected("a", DEEP, "unreadable record"), Rejected("b", NEARLY, "unreadable record")])

    found = (await ledger_db.period_ledger("2026-12")).rejected

    assert found.charges == {}
    assert sorted(u.entry for u in found.unjudged) == ["a", "b"]
    assert await ledger_db.trim(time.time() + 60) == 2
    assert await ledger_db.rejected() == []


@pytest.mark.parametrize("column", ["candidates", "generations"])
async def test_the_export_names_a_row_nested_too_deep(ledger_db: LedgerDB, column: str) -> None:
    values = list(row_from_record({"request_id": "deep", "tenant": "t", "cost_usd": "0.1", "ts": 1.0}, "e-1"))
    values[list(export.COLUMNS).index(column)] = DEEP
    await ledger_db.insert([tuple(values)])

    with pytest.raises(export.UnreadableRow, match=r"'deep'.*nested deeper"):
        export.write(ledger_db.iter_rows(), io.StringIO(), "jsonl")


async def test_the_stream_trim_exports_a_deep_entry_as_its_text(client: Any, tmp_path: Path) -> None:
    out = tmp_path / "ledger.jsonl"
    stream = ledger_key(3)
    await client.xadd(stream, {"record": DEEP}, id=f"{OLD_MS}-0")
    await client.xadd(stream, {"record": '{"request_id":"nearly","candidates":' + NEARLY + "}"}, id=f"{OLD_MS}-1")

    assert await ledger.trim(client, out, retention_days=90) == ledger.Trimmed(2, {})
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["record"] for line in lines] == [DEEP, '{"request_id":"nearly","candidates":' + NEARLY + "}"]
    assert await client.xlen(stream) == 0
