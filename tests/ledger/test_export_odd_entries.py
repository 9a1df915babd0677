"""`python -m services.router.ledger export` and `trim --out FILE` on a ledger stream holding an entry that is no
record as a router writes it (its `record` field not JSON, or no `record` field): exported as it is, never dropped,
and the trim goes on. Before, the export stopped at it with a traceback, and every scheduled trim failed there while
the ledger filled the money Redis. Real Redis (one server and a Redis Cluster)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.router import ledger
from services.router.store import ledger_key
from tests.ledger.test_trim_beside_the_sink import OLD_MS, add

SHARD = 5


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    made = connect(any_redis_url)
    yield made
    await made.aclose()


async def test_entries_that_are_no_record_are_exported_as_they_are_and_trimmed(client: Any, tmp_path: Path) -> None:
    out = tmp_path / "ledger.jsonl"
    stream = ledger_key(SHARD)
    await client.xadd(stream, {"record": b"{not json \xff"}, id=f"{OLD_MS}-0")
    await client.xadd(stream, {"other": "field"}, id=f"{OLD_MS}-1")
    await add(client, SHARD, "old-charge", f"{OLD_MS}-2")

    assert await ledger.trim(client, out, retention_days=90) == ledger.Trimmed(3, {})
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["id"], line["record"]) for line in lines[:2]] == [
        (f"{OLD_MS}-0", "{not json \\xff"),
        (f"{OLD_MS}-1", {"other": "field"}),
    ]
    assert lines[2]["record"]["request_id"] == "old-charge"
    assert await client.xlen(stream) == 0
