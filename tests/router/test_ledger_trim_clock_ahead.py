"""`ledger trim --out FILE` deletes only what it exported. Its retention's cutoff comes from the clock of the host it
runs on, and the ids of the stream's entries from Redis' clock: with the job's clock ahead of Redis' by more than the
retention (a node's clock set wrong, or Redis' host behind), a charge landing on a shard between that shard's export
and its trim has an id below the cutoff. It was deleted by the trim (XTRIM MINID cutoff) though it was never written
to FILE: lost from the only durable record where no SQL sink reads the ledger. A real Redis; the charge lands as the
export reads the streams."""

from __future__ import annotations

import json
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from services.router import ledger
from services.router.store import ledger_key
from tests.conftest import ledger_records
from tests.redis_servers import RedisServer, money_redis

AHEAD_S = 3 * 86400  # the job's clock, ahead of Redis' by more than the retention below


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


# The charge lands on the shard an entry was exported from, or on one that had none to export (trimmed all the same
# to the cutoff, by the version before, once any shard had exported an entry).
@pytest.mark.parametrize("shard", [0, 1], ids=["exported-from", "nothing-exported"])
async def test_a_charge_landing_during_a_trim_run_by_a_clock_ahead_is_kept_or_exported(
    money: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard: int
) -> None:
    client = redis.from_url(money.url)
    try:
        await client.xadd(ledger_key(0), {"record": json.dumps({"n": "old"})})
        monkeypatch.setattr(ledger, "time", types.SimpleNamespace(time=lambda: time.time() + AHEAD_S))
        exported_from = client.xrange
        landed: list[bytes | str] = []

        async def xrange_then_a_charge_lands(name: str, **kwargs: Any) -> Any:
            entries = await exported_from(name, **kwargs)
            if name == ledger_key(shard) and kwargs.get("count") == ledger.BATCH and not landed:  # the export's read
                # A router's charge lands on the shard just read (Redis dates it by its own clock).
                charge = json.dumps({"n": "landed during the trim"})
                landed.append(await client.xadd(ledger_key(shard), {"record": charge}))
            return entries

        monkeypatch.setattr(client, "xrange", xrange_then_a_charge_lands)
        out = tmp_path / "ledger.jsonl"
        await ledger.trim(client, out, retention_days=1)
        monkeypatch.undo()
        in_file = [json.loads(line)["record"]["n"] for line in out.read_text().splitlines()]
        on_stream = [record["n"] for record in await ledger_records(client)]
        assert in_file == ["old"]
        assert on_stream == ["landed during the trim"], "a charge the trim never exported was deleted"
    finally:
        await client.aclose()
