"""What a replay of a long outbox holds in memory is about the file's size, not its entries': read whole as entries
(some 3 KB each, against 0.5-1 KB a line), an outbox an outage left long (100,000 lines) took more memory than the
chart's limit for the router (512 MiB), and the kubelet killed it as it read the file, at every start, however short
its replay's bound. A real Redis; the replay bounded to a moment, as its read is what is measured."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from services.router.outbox import Outbox, OutboxCharge
from services.router.store import Hold, RedisStore, period_id
from tests.router.test_admission import ACCOUNT

DAY = period_id("day")
LINES = 5_000


def charge_line(i: int) -> str:
    """A charge as a router keeps it, with a record of a request's usual fields (about 600 bytes a line)."""
    hold = Hold(f"r-{i}", 7_000, DAY, "router-gone", f"n-{i}")
    generation = {"model": "gpt-4o-mini", "input_tokens": 1_200, "output_tokens": 300}
    record = {
        "request_id": hold.request_id,
        "tenant": ACCOUNT.tenant,
        "key": ACCOUNT.key,
        "model": "gpt-4o-mini",
        "reason": "classifier",
        "outcome": "ok",
        "cost_usd": "0.000000001234",
        "baseline_cost_usd": "0.00001",
        "generations": [generation],
        "ts": 1_800_000_000.0,
    }
    return OutboxCharge(ACCOUNT, hold, 1_234, record, f"charge-{i}").to_json()


async def test_a_replay_holds_about_the_files_size_in_memory(redis_url: str, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    outbox.path.write_text("".join(charge_line(i) + "\n" for i in range(LINES)), encoding="utf-8")
    size = outbox.path.stat().st_size
    store = RedisStore(redis_url)
    try:
        await store.ping()  # connected before the measure
        tracemalloc.start()
        try:
            landed = await outbox.replay(store, 0.01)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await store.close()
    assert 0 < landed < LINES and len(outbox) == LINES - landed
    assert peak < 2 * size, f"a replay of a {size} byte outbox held {peak} bytes"
